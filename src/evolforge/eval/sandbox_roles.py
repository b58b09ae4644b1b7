"""The sandbox child's roles for a run with tests: the program's ``worker`` and the tests' ``checker``.

Not imported by the parent: :mod:`evolforge.eval.sandbox` passes this file's text, followed by
``sandbox_os_layers.py``'s and ``sandbox_child.py``'s, to ``python -I -B -c``. A run with tests uses two children,
each locked down the same way:

- the **worker** runs the candidate program, reports the names of the callables it defined, then answers calls
  (``{"call": name, "args": [...]}``) with the **value** returned, encoded as plain data, or the exception raised;
- the **checker** never runs candidate code: it runs the trusted setup and the tests, with every name the tests
  call in the program replaced by a proxy that sends the call to the worker and decodes the answer into plain
  Python values. When the tests' last statement completes it writes the parent's nonce to a pipe that only it
  holds; the parent's verdict is "passed" only when that nonce arrives.

The candidate's process can write anything into its answers, but an answer is only data: it decodes into
``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set`` or
``frozenset`` built by the checker, so no method of the candidate (``__eq__``, ``__len__``, a finalizer) ever
runs where the tests are compared, and the candidate never sees the nonce, the tests or the expected values.

The wire format (one JSON object per line): lists are JSON arrays; ``None``, bools, ints, floats and strings are
JSON scalars (floats exactly, by their shortest repr; NaN and infinities as ``NaN`` / ``Infinity``; ``-0.0`` kept);
the other types are one-key objects: ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict (insertion order
kept, keys of any plain type), ``{"s": [...]}`` set, ``{"f": [...]}`` frozenset, ``{"b": "hex"}`` bytes (and
bytearray), ``{"c": [re, im]}`` complex. Subclasses of these types and numpy scalars / arrays are reduced to the
plain value (``float(x)``, ``x.tolist()``): their methods never cross. Anything else is not data: the call fails.
"""

import builtins
import json
import os
import site
import sys

WIRE_DEPTH = 100  # nesting a value may have on the wire
WIRE_LINE = 32 * 1024 * 1024  # bytes one message may take
_PLAIN_BASES = (int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)


def _encode(value, depth=0):
    """``value`` as JSON-ready plain data (see the module docstring), or TypeError."""
    if depth > WIRE_DEPTH:
        raise TypeError("a value nested deeper than %d levels" % WIRE_DEPTH)
    kind, inner = type(value), depth + 1
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if kind is list:
        return [_encode(v, inner) for v in value]
    if kind is tuple:
        return {"t": [_encode(v, inner) for v in value]}
    if kind is dict:
        return {"d": [[_encode(k, inner), _encode(v, inner)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [_encode(v, inner) for v in value]}
    if kind is bytes or kind is bytearray:
        return {"b": bytes(value).hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if getattr(kind, "__module__", None) == "numpy" and hasattr(value, "tolist"):
        return _encode(value.tolist(), inner)
    for base in _PLAIN_BASES:  # a subclass: only its plain value crosses, none of its methods
        if isinstance(value, base):
            return _encode(base(value), inner)
    raise TypeError("not plain data: a %s" % kind.__name__)


def _decode(data):
    """Plain Python values from the wire format; ValueError for anything else."""
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if not isinstance(data, dict):
        return data  # json gives only None, bool, int, float and str here
    if len(data) != 1:
        raise ValueError("a tagged value has exactly one key")
    (tag, body), = data.items()
    if tag == "t":
        return tuple(_decode(v) for v in body)
    if tag == "d":
        return {_decode(k): _decode(v) for k, v in body}
    if tag in ("s", "f"):
        return (set if tag == "s" else frozenset)(_decode(v) for v in body)
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "c":
        return complex(float(body[0]), float(body[1]))
    raise ValueError("unknown tag %r" % tag)


def read_roots(packages):
    """What the program may read: the interpreter, the allowed third-party packages, the system's libraries.

    Computed once by the parent (the same interpreter), so that no child pays for ``site`` and the listing."""
    base = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    dirs, listable = set(base), set()
    for sp in {os.path.realpath(p) for p in site.getsitepackages()}:
        if any(sp == b or sp.startswith(b + os.sep) for b in base) or not os.path.isdir(sp):
            continue
        listable.add(sp)  # the import system lists it; files are readable only in allowed packages
        for entry in os.listdir(sp):
            stem = entry.split("-")[0].split(".")[0]
            if stem in packages or entry.removesuffix(".libs") in packages:
                dirs.add(os.path.join(sp, entry))
    dirs.add(os.path.dirname(os.path.realpath(os.__file__)))  # the standard library
    dirs |= {"/usr", "/lib", "/lib64", "/lib32", "/sys/devices/system/cpu"}
    files = ["/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/urandom", "/dev/zero"]
    return sorted(d for d in dirs if os.path.exists(d)), files, sorted(listable)


class _Channel:
    """One JSON object per line over a pair of pipe ends."""

    def __init__(self, read_fd, write_fd):
        self.reader = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self.writer = os.fdopen(write_fd, "wb", buffering=1 << 16)

    def send(self, message):
        self.writer.write(json.dumps(message).encode("utf-8", "surrogatepass") + b"\n")
        self.writer.flush()

    def receive(self):
        """The next message, or None at the end of the stream."""
        line = self.reader.readline(WIRE_LINE + 1)
        if not line:
            return None
        if len(line) > WIRE_LINE:
            raise ValueError("a message longer than %d bytes" % WIRE_LINE)
        message = json.loads(line.decode("utf-8", "surrogatepass"))
        if not isinstance(message, dict):
            raise ValueError("a message is a JSON object")
        return message


def _describe(error):
    """The name and message of an exception the program raised (its own code may run here: worker side)."""
    try:
        return {"raised": str(type(error).__name__), "message": str(error)[:500]}
    except BaseException:  # noqa: BLE001 - a hostile __str__ is still a raised exception
        return {"raised": "Exception", "message": "(unprintable)"}


def _serve(namespace, channel):
    """Worker: answer calls until the checker closes its end. Runs in the candidate's process, so nothing here
    is trusted: whatever it sends is only data for the checker to decode."""
    while True:
        request = channel.receive()
        if request is None:
            return
        try:
            function = namespace.get(str(request["call"]))
            if not callable(function):
                raise NameError("the program defines no function %r" % request["call"])
            args = [_decode(a) for a in request["args"]]
            kwargs = {str(k): _decode(v) for k, v in request["kwargs"]}
            reply = {"return": _encode(function(*args, **kwargs))}
            try:  # arguments the function changed in place go back, so that tests may look at them
                reply["args"] = [_encode(a) for a in args]
            except BaseException:  # noqa: BLE001 - an argument that no longer is data stays as it was
                reply["args"] = None
        except BaseException as error:  # noqa: BLE001 - SystemExit too: a call that left early raised
            reply = _describe(error)
        channel.send(reply)


def _worker(code, channel, traceback):
    """Run the program, say which callables it defined (or why it did not load), then serve calls."""
    namespace = {"__name__": "candidate", "__builtins__": __builtins__}
    try:
        exec(compile(code, "<candidate>", "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - a program that did not run to its end is never loaded
        traceback.print_exc()
        channel.send({"loaded": False, **_describe(error)})
        return
    names = [k for k, v in list(namespace.items()) if type(k) is str and not k.startswith("__") and callable(v)]
    channel.send({"loaded": True, "callables": names})
    _serve(namespace, channel)


class CandidateError(Exception):
    """The program raised an exception that is not a built-in one, or its process ended, during a call."""


def _copy_back(args, changed):
    """Apply to the checker's own list/dict/set arguments what the call did to them in the program."""
    for arg, new in zip(args, changed):
        value = _decode(new)
        if type(arg) is list and type(value) is list:
            arg[:] = value
        elif type(arg) in (dict, set) and type(value) is type(arg):
            arg.clear()
            arg.update(value)


def _proxy(name, channel):
    """A stand-in for the program's ``name`` in the tests: the call crosses as data, the answer comes back as
    plain values (or the exception, re-raised as the built-in class of that name or CandidateError)."""

    def call(*args, **kwargs):
        channel.send({"call": name, "args": [_encode(a) for a in args],
                      "kwargs": [[k, _encode(v)] for k, v in kwargs.items()]})
        reply = channel.receive()
        if reply is None:
            raise CandidateError("the program's process ended during the call %s(...)" % name)
        if "raised" in reply:
            cls = getattr(builtins, str(reply["raised"]), None)
            message = str(reply.get("message", ""))
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise CandidateError("%s: %s" % (reply["raised"], message))
        if reply.get("args") is not None:
            _copy_back(args, reply["args"])
        return _decode(reply["return"])

    call.__name__ = call.__qualname__ = name
    return call


def _names_called(tests):
    import ast  # only the checker's default rule needs it: the worker and a program skip the import's cost
    return {node.id for node in ast.walk(ast.parse(tests)) if isinstance(node, ast.Name)}


def _checker(cfg, channel, result_fd):
    """Run setup and tests against the worker's values; write the nonce when the tests' last statement ends.
    Returns normally only then; any failure propagates (the caller prints it and exits non-zero)."""
    hello = channel.receive()
    if hello is None or hello.get("loaded") is not True:
        why = "its process ended" if hello is None else "%s: %s" % (hello.get("raised"), hello.get("message"))
        raise CandidateError("the program did not run to its end (%s)" % why)
    defined = {str(n) for n in hello.get("callables", [])}
    namespace = {"__name__": "tests", "__builtins__": builtins}
    exec(compile(cfg["setup"], "<setup>", "exec"), namespace)
    if cfg["calls"] is not None:  # named by the caller: always the program's, even over the setup's stub
        names = set(cfg["calls"])
    else:  # the program's callables the tests name, but never one that shadows a builtin or the setup's own
        names = (_names_called(cfg["tests"]) & defined) - set(namespace) - set(dir(builtins))
    for name in names:
        namespace[name] = _proxy(name, channel)
    exec(compile(cfg["tests"], "<tests>", "exec"), namespace)
    os.write(result_fd, cfg["nonce"].encode("ascii"))


def _run_role(cfg, traceback, exit_now):
    """Worker or checker, on the pipe ends the parent handed this process."""
    channel = _Channel(cfg["read_fd"], cfg["write_fd"])
    if cfg["role"] == "worker":
        _worker(cfg["code"], channel, traceback)
        exit_now(0)
    try:
        _checker(cfg, channel, cfg["result_fd"])
    except BaseException:  # noqa: BLE001 - a failed test, a broken answer: no nonce, so not passed
        traceback.print_exc()
        sys.stderr.flush()
        exit_now(1)
    sys.stderr.flush()
    exit_now(0)
