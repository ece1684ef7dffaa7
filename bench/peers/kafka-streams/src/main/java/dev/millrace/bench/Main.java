package dev.millrace.bench;

/**
 * The Kafka Streams peer of Millrace's benchmark. One process runs one of:
 *
 * <ul>
 *   <li>{@code window}: the windowed aggregate of Millrace's benchmark pipeline ({@link WindowApp});
 *   <li>{@code join}: the stream-table join of the restart benchmark ({@link JoinApp});
 *   <li>{@code passthrough}: a plain consumer/producer copy loop, the broker's limit ({@link
 *       PassThrough}).
 * </ul>
 *
 * Options are {@code --name value} pairs; see each class. The process runs until SIGTERM and then
 * closes cleanly (Kafka Streams commits and writes its checkpoints), or until SIGKILL.
 */
public final class Main {
    public static void main(String[] argv) throws Exception {
        if (argv.length == 0) {
            System.err.println("usage: Main window|join|passthrough --name value ...");
            System.exit(2);
        }
        Args args = new Args(argv, 1);
        switch (argv[0]) {
            case "window" -> Streams.run(WindowApp.topology(args), args);
            case "join" -> Streams.run(JoinApp.topology(args), args);
            case "passthrough" -> PassThrough.run(args);
            default -> {
                System.err.println("unknown command " + argv[0]);
                System.exit(2);
            }
        }
    }

    private Main() {}
}
