"""A stand-in for llama-server in the scale benchmark (P5): a real HTTP server process, as light as a
Python process gets (run with `python -I -S`, stdlib `socket` + `select` only: ~9 MB RSS).

It accepts llama-server's flags (--model --host --port --threads --alias --ctx-size, and ignores
others), answers GET /health with 200 {"status":"ok"}, GET /v1/models with the alias, and
POST /v1/chat/completions with a fixed one-word reply; HTTP/1.1 keep-alive, many connections at once
(epoll, one thread). It never reads the model file. SIGTERM/SIGINT end it at once (default action).

The bench writes an executable copy of this file with a `#!<python> -IS` line and points berth at it
with BERTH_LLAMA_SERVER, so berth's real pipeline (select, port, route, launch, await_ready,
supervise) launches and watches it exactly as it would llama-server.
"""

import select
import socket
import sys


def parse_flags(argv):
    flags = {"--host": "127.0.0.1", "--port": "8080", "--alias": "standin"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            flags[key] = value
        elif arg.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            flags[arg] = argv[i + 1]
            i += 1
        i += 1
    return flags


def response(status, body, keep_alive):
    close = "" if keep_alive else "Connection: close\r\n"
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{close}\r\n"
    return head.encode("latin-1") + body


def answer(request_head, alias):
    line = request_head.split(b"\r\n", 1)[0].split(b" ")
    method, path = (line + [b"", b""])[:2]
    path = path.split(b"?", 1)[0]
    if path == b"/health":
        return "200 OK", b'{"status":"ok"}'
    if path == b"/v1/models" and method == b"GET":
        return "200 OK", b'{"object":"list","data":[{"id":"%s","object":"model"}]}' % alias
    if path == b"/v1/chat/completions" and method == b"POST":
        return "200 OK", (
            b'{"id":"standin","object":"chat.completion","model":"%s","choices":[{"index":0,'
            b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}' % alias
        )
    return "404 Not Found", b'{"error":{"code":404,"message":"File Not Found"}}'


def serve(host, port, alias):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    connections = {}  # fd -> [socket, buffer]
    print(f"stand-in engine listening on {host}:{port}", file=sys.stderr, flush=True)
    while True:
        for fd, _events in poller.poll():
            if fd == listener.fileno():
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    connections[conn.fileno()] = [conn, b""]
                    poller.register(conn.fileno(), select.EPOLLIN)
                continue
            conn, buffer = connections[fd]
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del connections[fd]
                conn.close()
                continue
            buffer += data
            close = False
            while b"\r\n\r\n" in buffer:
                head, rest = buffer.split(b"\r\n\r\n", 1)
                length = 0
                keep_alive = True
                for header in head.split(b"\r\n")[1:]:
                    name, _, value = header.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip() or 0)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        keep_alive = False
                if len(rest) < length:
                    break
                buffer = rest[length:]
                status, body = answer(head, alias)
                try:
                    conn.setblocking(True)
                    conn.sendall(response(status, body, keep_alive))
                    conn.setblocking(False)
                except OSError:
                    close = True
                    break
                if not keep_alive:
                    close = True
                    break
            if close:
                poller.unregister(fd)
                del connections[fd]
                conn.close()
            else:
                connections[fd][1] = buffer


def main(argv):
    flags = parse_flags(argv)
    if "--model" not in flags and "-m" not in flags:
        print("stand-in engine: --model is required", file=sys.stderr)
        return 2
    alias = (flags.get("--alias") or "standin").encode("latin-1", "replace")
    serve(flags["--host"], int(flags["--port"]), alias)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
