// QEMU's guestfwd ...-cmd: runs this once per guest connection with the
// connection on stdin/stdout; it joins it to the test's IMDS server.
import { connect } from "node:net";

const socket = connect(Number(process.argv[2]), "127.0.0.1");
process.stdin.pipe(socket);
socket.pipe(process.stdout);
socket.on("close", () => process.exit(0));
socket.on("error", () => process.exit(1));
