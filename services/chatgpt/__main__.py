from runtime import main_for
from services.chatgpt.connector import ChatGptSource

main_for(ChatGptSource)
