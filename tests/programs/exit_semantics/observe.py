"""Records how the interpreter runs it, then ends the way its second argument says.

``python observe.py OUT_DIR ENDING``, ENDING one of: return, exit3, exit-msg, exit-none,
raise, interrupt (an uncaught KeyboardInterrupt), sigterm. It writes to OUT_DIR:

* main.json: what the code saw while it ran (names, argv, sys.path[0], cwd, streams, ...);
* thread.json: from a non-daemon thread that waits until the main thread's code is over;
* atexit.json: from the atexit handler that runs last: the order the handlers ran in and
  what was true by then.

It also prints to stdout and stderr, and leaves text without a newline or flush in stdout,
so that the log shows how the streams were flushed.
"""

import atexit
import io
import json
import os
import signal
import sys
import threading

out, ending = sys.argv[1], sys.argv[2]
ran = []
thread_finished = threading.Event()


def write(name, record):
    with open(os.path.join(out, name), "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True, indent=1)


def after_main():
    threading.main_thread().join()  # returns once the main thread's code is over
    write("thread.json", {"main_thread_alive": threading.main_thread().is_alive()})
    print("thread: finished after the main code")
    thread_finished.set()


def first_registered():
    ran.append("first registered")
    main = sys.modules["__main__"]
    write("atexit.json", {
        "order": ran,
        "thread_finished_before": thread_finished.is_set(),
        "argv": sys.argv,
        "main_module_is_this": vars(main) is globals(),
        "main_has_file": hasattr(main, "__file__"),
    })
    sys.stdout.write("atexit: last handler, no newline")


def second_registered():
    ran.append("second registered")
    print("atexit: first handler")


def stream(s):
    return {"line_buffering": s.line_buffering, "write_through": s.write_through,
            "binary": type(s.buffer).__name__, "errors": s.errors, "mode": s.mode}


write("main.json", {
    "name": __name__,
    "file": __file__,
    "spec": getattr(__spec__, "name", None),
    "package": __package__,
    "loader": type(__loader__).__name__,
    "main_module_is_this": vars(sys.modules["__main__"]) is globals(),
    "argv": sys.argv,
    "path0": sys.path[0],
    "cwd": os.getcwd(),
    "stdout": stream(sys.stdout),
    "stderr": stream(sys.stderr),
    "sigint": "default_int_handler"
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "other",
    "sigpipe": "ignored" if signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN else "other",
    "sigterm": "default" if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else "other",
    "stdin_is_text": isinstance(sys.stdin, io.TextIOWrapper),
    # not compared with plain python: says how corral started this process
    "orig_argv": sys.orig_argv,
})
atexit.register(first_registered)
atexit.register(second_registered)
threading.Thread(target=after_main, name="after-main").start()
print("main: started the thread")
print("main: to stderr", file=sys.stderr)
sys.stdout.write("main: no newline, no flush;")


def fail():
    raise RuntimeError("boom")


if ending == "exit3":
    sys.exit(3)
elif ending == "exit-msg":
    sys.exit("exit-msg: bad things happened")
elif ending == "exit-none":
    sys.exit(None)
elif ending == "raise":
    fail()
elif ending == "interrupt":
    raise KeyboardInterrupt
elif ending == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait()
