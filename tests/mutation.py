"""A fork server that makes mutation testing (mutmut) affordable on a small CPU.

mutmut runs the tests once per mutant; here most of that time is importing torch, transformers and
diffusers. The server imports them once; each mutant's test run is a fork of it that imports the
project (the mutated file, fresh from disk) and runs pytest. The runner mutmut calls is this file's
client, which starts with `python -S` in milliseconds and returns the tests' exit status.

    python tests/mutation.py serve                       # once, in another shell (Ctrl-C when done)
    mutmut run --paths-to-mutate utils/erase/closed_form.py \
        --runner "python -S tests/mutation.py client tests/test_closed_form.py"
    mutmut results

The server never imports the project itself, so a fork always sees the current (mutated) source.
"""
import argparse
import os
import socket
import sys

SOCKET = os.environ.get("MUTATION_SOCKET", "/tmp/rece-mutation.sock")


def client(pytest_args: list[str]) -> int:
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCKET)
    s.sendall("\0".join([os.getcwd(), *pytest_args]).encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk:
            return 1  # the server died: count as a failure, never as a pass
        reply += chunk
    return int(reply)


def serve() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import diffusers  # noqa: F401  (the slow imports, done once)
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(1)
    if os.path.exists(SOCKET):
        os.unlink(SOCKET)
    server = socket.socket(socket.AF_UNIX)
    server.bind(SOCKET)
    server.listen(8)
    print(f"mutation server ready on {SOCKET}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            cwd, *args = data.decode().rstrip("\n").split("\0")
            pid = os.fork()
            if pid == 0:  # the child: fresh project imports from the (mutated) files
                code = 1
                try:
                    os.chdir(cwd)
                    sys.path[:0] = [cwd, os.path.join(cwd, "tests")]
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.dup2(devnull, 2)
                    code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", *args]))
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(f"{code if code >= 0 else 1}\n".encode())
            except OSError:
                pass  # mutmut timed the client out and closed the socket


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("serve", "client"), help="serve: the fork server; client: mutmut's runner")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="client: the tests to run (pytest arguments)")
    return p.parse_args(argv)


def main(args) -> int:
    if args.mode == "serve":
        serve()
        return 0
    return client(args.pytest_args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
