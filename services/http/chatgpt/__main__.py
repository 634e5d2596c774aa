from runtime import main_for
from services.http.chatgpt.connector import ChatGptSource

main_for(ChatGptSource)
