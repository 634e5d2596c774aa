package meshconnect.interop;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.cloudevents.CloudEvent;
import io.cloudevents.core.builder.CloudEventBuilder;
import io.cloudevents.jackson.JsonFormat;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.eventmesh.client.tcp.EventMeshTCPClient;
import org.apache.eventmesh.client.tcp.EventMeshTCPClientFactory;
import org.apache.eventmesh.client.tcp.conf.EventMeshTCPClientConfig;
import org.apache.eventmesh.common.protocol.SubscriptionMode;
import org.apache.eventmesh.common.protocol.SubscriptionType;
import org.apache.eventmesh.common.protocol.tcp.Package;
import org.apache.eventmesh.common.protocol.tcp.UserAgent;

/**
 * A test peer driven by the Python suite through the Java SDK's TCP client (CloudEvents flavour).
 *
 * <p>Every line on stdout is one JSON object with a {@code kind}; the SDK's own logging is moved to
 * stderr so it cannot be mistaken for one. Events travel in and out as structured CloudEvents JSON.
 *
 * <pre>
 * publish|broadcast|request  read events from stdin (one per line), print an "ack"/"response" per event
 * subscribe                  print "ready", then an "event" per push until --count arrived or --idle-ms passed
 * respond                    subscribe SYNC and answer every request with its data prefixed by "re:"
 * flood                      publish --count events of --size bytes of JSON data to --topic from --threads
 *                            threads (the SDK's publish waits for its ack), then print their "rate"
 * </pre>
 *
 * Options: --host --port --topic --group --mode (CLUSTERING|BROADCASTING) --count --idle-ms
 * --timeout-ms --username --password --size --threads.
 */
public final class SdkPeer {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final JsonFormat FORMAT = new JsonFormat();
    private static PrintStream out;

    private SdkPeer() {}

    public static void main(String[] args) throws Exception {
        out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        System.setOut(System.err);
        // The SDK's bundled log4j2.xml logs every frame at DEBUG: that would be most of its cost.
        org.apache.logging.log4j.core.config.Configurator.setAllLevels("", org.apache.logging.log4j.Level.WARN);
        Map<String, String> options = parse(args);
        String role = args[0];
        String purpose = role.equals("subscribe") || role.equals("respond") ? "sub" : "pub";
        EventMeshTCPClient<CloudEvent> client = connect(options, purpose);
        try {
            switch (role) {
                case "publish", "broadcast", "request" -> send(client, role, options);
                case "subscribe" -> subscribe(client, options);
                case "respond" -> respond(client, options);
                case "flood" -> flood(client, options);
                default -> throw new IllegalArgumentException("unknown role " + role);
            }
        } finally {
            client.close();
        }
        emit(JSON.createObjectNode().put("kind", "done"));
        System.exit(0);
    }

    private static Map<String, String> parse(String[] args) {
        Map<String, String> options = new HashMap<>();
        for (int i = 1; i + 1 < args.length; i += 2) {
            options.put(args[i].replaceFirst("^--", ""), args[i + 1]);
        }
        return options;
    }

    private static EventMeshTCPClient<CloudEvent> connect(Map<String, String> options, String purpose) {
        UserAgent agent = UserAgent.builder()
            .env("test").idc("idc1").subsystem("5023").pid((int) ProcessHandle.current().pid())
            .host("127.0.0.1").port(0).version("2.0")
            .username(options.getOrDefault("username", "interop"))
            .password(options.getOrDefault("password", "interop"))
            .group(options.getOrDefault("group", "java-" + purpose)).purpose(purpose).unack(1000)
            .build();
        EventMeshTCPClientConfig config = EventMeshTCPClientConfig.builder()
            .host(options.getOrDefault("host", "127.0.0.1"))
            .port(Integer.parseInt(options.get("port")))
            .userAgent(agent)
            .build();
        EventMeshTCPClient<CloudEvent> client =
            EventMeshTCPClientFactory.createEventMeshTCPClient(config, CloudEvent.class);
        client.init();
        return client;
    }

    private static void send(EventMeshTCPClient<CloudEvent> client, String role, Map<String, String> options)
        throws Exception {
        long timeout = Long.parseLong(options.getOrDefault("timeout-ms", "10000"));
        BufferedReader input = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = input.readLine()) != null) {
            if (line.isBlank()) {
                continue;
            }
            CloudEvent event = FORMAT.deserialize(line.getBytes(StandardCharsets.UTF_8));
            ObjectNode answer = JSON.createObjectNode().put("id", event.getId());
            try {
                switch (role) {
                    case "publish" -> header(answer.put("kind", "ack"), client.publish(event, timeout));
                    case "broadcast" -> {
                        client.broadcast(event, timeout);
                        answer.put("kind", "ack").put("code", 0);
                    }
                    default -> {
                        Package response = client.rr(event, timeout);
                        header(answer.put("kind", "response"), response);
                        answer.put("body", String.valueOf(response.getBody()));
                    }
                }
            } catch (Exception exc) {
                answer.put("kind", "error").put("error", describe(exc));
            }
            emit(answer);
        }
    }

    private static String describe(Throwable exc) {
        StringBuilder text = new StringBuilder(String.valueOf(exc));
        for (Throwable cause = exc.getCause(); cause != null; cause = cause.getCause()) {
            text.append(" <- ").append(cause);
        }
        return text.toString();
    }

    private static void header(ObjectNode answer, Package pkg) {
        answer.put("code", pkg.getHeader().getCode()).put("desc", pkg.getHeader().getDesc())
            .put("seq", pkg.getHeader().getSeq());
    }

    private static void subscribe(EventMeshTCPClient<CloudEvent> client, Map<String, String> options)
        throws Exception {
        int count = Integer.parseInt(options.getOrDefault("count", "1"));
        long idleMillis = Long.parseLong(options.getOrDefault("idle-ms", "20000"));
        CountDownLatch remaining = new CountDownLatch(count);
        AtomicLong lastSeen = new AtomicLong(System.nanoTime());
        client.registerSubBusiHandler(event -> {
            emit(JSON.createObjectNode().put("kind", "event").set("event", tree(event)));
            lastSeen.set(System.nanoTime());
            remaining.countDown();
            return Optional.empty();
        });
        client.subscribe(options.get("topic"), SubscriptionMode.valueOf(options.getOrDefault("mode", "CLUSTERING")),
            SubscriptionType.ASYNC);
        client.listen();
        emit(JSON.createObjectNode().put("kind", "ready"));
        while (!remaining.await(100, TimeUnit.MILLISECONDS)) {
            if (System.nanoTime() - lastSeen.get() > TimeUnit.MILLISECONDS.toNanos(idleMillis)) {
                break;
            }
        }
        // Let the acks of the last pushes leave before the goodbye.
        Thread.sleep(200);
    }

    private static void respond(EventMeshTCPClient<CloudEvent> client, Map<String, String> options)
        throws Exception {
        int count = Integer.parseInt(options.getOrDefault("count", "1"));
        CountDownLatch remaining = new CountDownLatch(count);
        client.registerSubBusiHandler(event -> {
            emit(JSON.createObjectNode().put("kind", "event").set("event", tree(event)));
            remaining.countDown();
            // The SDK can only serialise an event under application/cloudevents+json, so the answer
            // is a JSON string; built from the request, it keeps the request's extensions.
            return Optional.of(CloudEventBuilder.from(event)
                .withData("application/cloudevents+json", answer(event)).build());
        });
        client.subscribe(options.get("topic"), SubscriptionMode.CLUSTERING, SubscriptionType.SYNC);
        client.listen();
        emit(JSON.createObjectNode().put("kind", "ready"));
        remaining.await(Long.parseLong(options.getOrDefault("idle-ms", "20000")), TimeUnit.MILLISECONDS);
        Thread.sleep(200);
    }

    private static void flood(EventMeshTCPClient<CloudEvent> client, Map<String, String> options)
        throws Exception {
        int count = Integer.parseInt(options.getOrDefault("count", "20000"));
        int threads = Integer.parseInt(options.getOrDefault("threads", "16"));
        String pad = "x".repeat(Integer.parseInt(options.getOrDefault("size", "1024")));
        String topic = options.get("topic");
        java.util.concurrent.atomic.AtomicInteger next = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger failed = new java.util.concurrent.atomic.AtomicInteger();
        Thread[] workers = new Thread[threads];
        long started = System.nanoTime();
        for (int t = 0; t < threads; t++) {
            workers[t] = new Thread(() -> {
                for (int n = next.getAndIncrement(); n < count; n = next.getAndIncrement()) {
                    CloudEvent event = CloudEventBuilder.v1()
                        .withId("flood-" + n).withSource(java.net.URI.create("/interop/java")).withType("interop.flood")
                        .withSubject(topic).withDataContentType("application/cloudevents+json")
                        .withData(("{\"n\":" + n + ",\"pad\":\"" + pad + "\"}").getBytes(StandardCharsets.UTF_8))
                        .build();
                    try {
                        if (client.publish(event, 30_000).getHeader().getCode() != 0) {
                            failed.incrementAndGet();
                        }
                    } catch (Exception exc) {
                        failed.incrementAndGet();
                    }
                }
            });
            workers[t].start();
        }
        for (Thread worker : workers) {
            worker.join();
        }
        double seconds = (System.nanoTime() - started) / 1e9;
        emit(JSON.createObjectNode().put("kind", "rate").put("events", count).put("failed", failed.get())
            .put("seconds", seconds));
    }

    private static byte[] answer(CloudEvent request) {
        try {
            com.fasterxml.jackson.databind.JsonNode data = request.getData() == null
                ? JSON.getNodeFactory().textNode("") : JSON.readTree(request.getData().toBytes());
            return JSON.writeValueAsBytes("re:" + (data.isTextual() ? data.textValue() : data.toString()));
        } catch (java.io.IOException exc) {
            throw new IllegalStateException(exc);
        }
    }

    private static ObjectNode tree(CloudEvent event) {
        try {
            return (ObjectNode) JSON.readTree(FORMAT.serialize(event));
        } catch (java.io.IOException exc) {
            throw new IllegalStateException(exc);
        }
    }

    private static synchronized void emit(ObjectNode line) {
        out.println(line.toString());
    }
}
