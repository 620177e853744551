// Local MongoDB-protocol test server for moldwatch's tests and demo.
//
// Run as a single source file (Java 11+ compiles it in memory):
//     java -cp 'mongolib/*' MongoLauncher.java PORT [HOST] [--tls SPEC] [--also PORT SPEC]...
//
// Plain TCP by default. `--tls SPEC` makes PORT TLS-only; each `--also PORT SPEC`
// adds another TLS listener on the same data (the tests' expired-certificate and
// mutual-TLS listeners). SPEC is `KEY_AND_CHAIN.pem` or `KEY_AND_CHAIN.pem+CLIENT_CA.pem`:
// the server's unencrypted PKCS#8 key and certificate chain in one PEM file (netty reads
// PEM itself, no key store needed), and with `+CLIENT_CA.pem` every client must present
// a certificate signed by that CA (mutual TLS).
//
// It wraps de.bwaldvogel:mongo-java-server 1.47.0 (memory backend, oplog on so
// change streams work) with three fixes that PyMongo 4.18+ needs:
//   1. report server version 4.4 / max wire version 9 (PyMongo's minimum is 9;
//      the library only offers 3.6/4.0/"5.0" at wire versions 6..8);
//   2. add `operationTime` (a BSON Timestamp) to successful command replies:
//      PyMongo's change stream requires it on the opening aggregate reply;
//   3. hold back EMPTY getMore replies on live (tailable / change-stream)
//      cursors by EMPTY_GETMORE_DELAY_MS, because the library answers at once
//      and an idle change stream would otherwise poll in a tight loop.
//      The delay is scheduled on the channel's event loop, not slept, so other
//      connections served by the same netty thread are not held up.
//
// The netty pipeline is the one MongoServer.bind builds, with our handler in
// place of MongoDatabaseHandler; we bootstrap it ourselves because MongoServer
// keeps that pipeline private.

import java.io.File;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.net.InetSocketAddress;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.bson.BsonTimestamp;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.wire.MongoDatabaseHandler;
import de.bwaldvogel.mongo.wire.MongoExceptionHandler;
import de.bwaldvogel.mongo.wire.MongoWireMessageEncoder;
import de.bwaldvogel.mongo.wire.MongoWireProtocolHandler;
import de.bwaldvogel.mongo.wire.MongoWireReplyEncoder;
import de.bwaldvogel.mongo.wire.message.ClientRequest;
import de.bwaldvogel.mongo.wire.message.MessageHeader;
import de.bwaldvogel.mongo.wire.message.MongoMessage;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.group.ChannelGroup;
import io.netty.channel.group.DefaultChannelGroup;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.handler.ssl.ClientAuth;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;

@SuppressWarnings("deprecation") // NioEventLoopGroup: deprecated in netty 4.2, still what MongoServer uses
public class MongoLauncher {

    // ~50 ms: long enough that an idle change stream costs a few polls a
    // second of CPU, short enough that tests see new events almost at once.
    static final long EMPTY_GETMORE_DELAY_MS = 50;

    /** MongoDB 4.4 speaks wire version 9, the lowest PyMongo 4.18+ accepts. */
    static final MongoVersion MONGO_4_4 = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(4, 4, 0);
        }

        @Override
        public int getWireVersion() {
            return 9;
        }
    };

    /** Memory backend with `hello` support and `operationTime` on replies. */
    static final class PatchedBackend extends MemoryBackend {
        private Method clockNow; // OplogClock.now(), package-private upstream
        private Field clockField; // CollectionBackedOplog.oplogClock

        @Override
        public Document handleCommand(Channel channel, String databaseName, String command, Document query) {
            boolean hello = command.equalsIgnoreCase("hello");
            // The library knows only the legacy name; `hello` is the same reply.
            Document response = super.handleCommand(channel, databaseName, hello ? "ismaster" : command, query);
            if (response == null) {
                return null;
            }
            if (hello || command.equalsIgnoreCase("ismaster")) {
                response.put("isWritablePrimary", Boolean.TRUE);
            }
            if (!response.containsKey("operationTime") && isOk(response)) {
                response.put("operationTime", operationTime());
            }
            return response;
        }

        private static boolean isOk(Document response) {
            Object ok = response.get("ok");
            return ok instanceof Number && ((Number) ok).doubleValue() == 1.0;
        }

        /**
         * The oplog position a change stream opened now would start after,
         * plus one increment: PyMongo resumes with startAtOperationTime, which
         * is inclusive, so this neither replays the last event nor skips the
         * next one (the next oplog entry gets exactly this timestamp or later).
         */
        private synchronized BsonTimestamp operationTime() {
            try {
                if (clockNow == null) {
                    clockField = oplog.getClass().getDeclaredField("oplogClock");
                    clockField.setAccessible(true);
                    clockNow = clockField.getType().getDeclaredMethod("now");
                    clockNow.setAccessible(true);
                }
                BsonTimestamp now = (BsonTimestamp) clockNow.invoke(clockField.get(oplog));
                return new BsonTimestamp(now.getValue() + 1);
            } catch (ReflectiveOperationException | RuntimeException e) {
                // Oplog disabled or library internals changed: wall-clock time
                // is still a valid Timestamp for PyMongo.
                return new BsonTimestamp(Instant.now(), 0);
            }
        }
    }

    /** MongoDatabaseHandler that answers idle tailable getMores after a pause. */
    static final class DelayingHandler extends MongoDatabaseHandler {
        private final MongoBackend backend;
        private final AtomicInteger replyIds = new AtomicInteger(1 << 30);

        DelayingHandler(MongoBackend backend, ChannelGroup channelGroup) {
            super(backend, channelGroup);
            this.backend = backend;
        }

        @Override
        protected void channelRead0(ChannelHandlerContext ctx, ClientRequest request) {
            if (!(request instanceof MongoMessage) || !isGetMore((MongoMessage) request)) {
                super.channelRead0(ctx, request);
                return;
            }
            MongoMessage message = (MongoMessage) request;
            Document reply;
            try {
                reply = backend.handleMessage(message);
            } catch (RuntimeException e) {
                // Let the library format the error reply exactly as usual.
                super.channelRead0(ctx, request);
                return;
            }
            MessageHeader header = new MessageHeader(replyIds.incrementAndGet(), message.getHeader().getRequestID());
            MongoMessage response = new MongoMessage(message.getChannel(), header, reply);
            if (isIdleLiveCursor(reply)) {
                ctx.executor().schedule(() -> ctx.channel().writeAndFlush(response),
                    EMPTY_GETMORE_DELAY_MS, TimeUnit.MILLISECONDS);
            } else {
                ctx.channel().writeAndFlush(response);
            }
        }

        private static boolean isGetMore(MongoMessage message) {
            Document doc = message.getDocument();
            return !doc.isEmpty() && doc.keySet().iterator().next().equalsIgnoreCase("getMore");
        }

        /** Empty batch on a cursor that stays open: only tailable cursors do that. */
        private static boolean isIdleLiveCursor(Document reply) {
            Object cursor = reply.get("cursor");
            if (!(cursor instanceof Document)) {
                return false;
            }
            Object batch = ((Document) cursor).get("nextBatch");
            Object id = ((Document) cursor).get("id");
            return batch instanceof List && ((List<?>) batch).isEmpty()
                && id instanceof Number && ((Number) id).longValue() != 0L;
        }
    }

    /** One TLS listener's settings, from a SPEC argument (see the top of this file). */
    static SslContext tlsContext(String spec) throws Exception {
        String[] parts = spec.split("\\+", 2);
        File keyAndChain = new File(parts[0]);
        // The same file holds the chain and the key: netty's PEM reader picks the blocks it needs.
        SslContextBuilder builder = SslContextBuilder.forServer(keyAndChain, keyAndChain);
        if (parts.length == 2) {
            builder.trustManager(new File(parts[1])).clientAuth(ClientAuth.REQUIRE);
        }
        return builder.build();
    }

    static void usage(String why) {
        System.err.println(why + "; usage: java -cp 'mongolib/*' MongoLauncher.java PORT [HOST] [--tls SPEC] [--also PORT SPEC]...");
        System.exit(2);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            usage("no port given");
        }
        int port = Integer.parseInt(args[0]);
        int options = args.length > 1 && !args[1].startsWith("--") ? 2 : 1; // where the -- options begin
        String host = options == 2 ? args[1] : "127.0.0.1";
        // port -> TLS context (null: plain TCP), in the order given
        List<Integer> ports = new ArrayList<>(List.of(port));
        List<SslContext> contexts = new ArrayList<>();
        contexts.add(null);
        for (int i = options; i < args.length; i++) {
            if (args[i].equals("--tls") && i + 1 < args.length) {
                contexts.set(0, tlsContext(args[++i]));
            } else if (args[i].equals("--also") && i + 2 < args.length) {
                ports.add(Integer.parseInt(args[++i]));
                contexts.add(tlsContext(args[++i]));
            } else {
                usage("unknown or incomplete argument " + args[i]);
            }
        }

        MongoBackend backend = new PatchedBackend();
        backend.version(MONGO_4_4);
        backend.enableOplog();

        EventLoopGroup boss = new NioEventLoopGroup(1);
        EventLoopGroup workers = new NioEventLoopGroup();
        ChannelGroup channels = new DefaultChannelGroup("mongodb-channels", workers.next());
        List<Channel> servers = new ArrayList<>();
        for (int i = 0; i < ports.size(); i++) {
            SslContext tls = contexts.get(i);
            servers.add(new ServerBootstrap()
                .group(boss, workers)
                .channel(NioServerSocketChannel.class)
                .option(ChannelOption.SO_BACKLOG, 100)
                .option(ChannelOption.SO_REUSEADDR, Boolean.TRUE) // restart on the same port at once
                .localAddress(new InetSocketAddress(host, ports.get(i)))
                .childOption(ChannelOption.TCP_NODELAY, Boolean.TRUE)
                .childHandler(new ChannelInitializer<SocketChannel>() {
                    @Override
                    public void initChannel(SocketChannel ch) {
                        if (tls != null) {
                            // First in the pipeline: the wire protocol sees only decrypted bytes, and
                            // a client that does not speak TLS (or fails verification) never reaches it.
                            ch.pipeline().addLast(tls.newHandler(ch.alloc()));
                        }
                        ch.pipeline().addLast(new MongoWireReplyEncoder());
                        ch.pipeline().addLast(new MongoWireMessageEncoder());
                        ch.pipeline().addLast(new MongoWireProtocolHandler());
                        ch.pipeline().addLast(new DelayingHandler(backend, channels));
                        ch.pipeline().addLast(new MongoExceptionHandler());
                    }
                })
                .bind().syncUninterruptibly().channel());
        }

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            servers.forEach(server -> server.close().awaitUninterruptibly());
            channels.close().awaitUninterruptibly();
            boss.shutdownGracefully(0, 1, TimeUnit.SECONDS);
            workers.shutdownGracefully(0, 1, TimeUnit.SECONDS);
            backend.close();
        }));
        // The Python side waits for a real `ping`; these lines are for humans.
        for (int i = 0; i < servers.size(); i++) {
            System.err.println("MongoLauncher listening on " + servers.get(i).localAddress()
                + (contexts.get(i) == null ? " (plain TCP)" : " (TLS)"));
        }
        servers.get(0).closeFuture().syncUninterruptibly();
    }
}
