"""The two programs ``code_exec`` runs in the sandbox for snippet tests: read as text, not imported.

Phase 1 (:func:`run_program`) runs the model's program, then the steps :mod:`code_checks` cut out
of the tests, and writes every value it was asked for to stdout as tagged JSON of plain builtin
data (:func:`make_encoder`). Nothing is compared there. Phase 2 (:func:`check`) runs the rewritten
tests with each call into the program replaced by a lookup that builds fresh builtin objects from
that text (:func:`make_lookups`), and reports pass or fail per test. Both tag their lines with a
random marker and write them with ``os.write``, so a replaced ``sys.stdout`` does not hide them.

Everything phase 1 uses once the program has started is bound before it starts, in locals,
default arguments and closures: the program can rebind builtins and module globals. Encoding
calls no method of the program's objects; only the builtin types' own C methods run. Standard
library only: the sandbox runs without site-packages.
"""

import _json  # the C half of json: importing json itself (and re) would double a run's start-up
import builtins
import os
import sys
from _json import encode_basestring_ascii

MAX_DEPTH = 100  # nesting a value may have; deeper (or cyclic) values are refused
MAX_MESSAGE = 200  # characters of an exception's message that are kept


def make_encoder(budget):
    """``encode(value)``: the JSON text of the tagged value, or of ``["unencodable", why]``.
    ``budget`` bounds the bytes of all values of the run together, so that one huge value fails
    its test rather than the run's output cap."""
    type_, issubclass_, len_, str_, join, quote = type, issubclass, len, str, ",".join, encode_basestring_ascii
    exception_, base_exception, max_depth = Exception, BaseException, MAX_DEPTH
    none_type, bool_, int_, float_, complex_, bytes_ = type(None), bool, int, float, complex, bytes
    list_, tuple_, dict_, set_, frozenset_ = list, tuple, dict, set, frozenset
    type_name, exc_args = type.__dict__["__name__"].__get__, BaseException.args.__get__
    exact_str, int_text, float_text, bytes_hex = str.__str__, int.__repr__, float.__repr__, bytes.hex
    real, imag = complex.real.__get__, complex.imag.__get__
    iterate = {list: list.__iter__, tuple: tuple.__iter__, set: set.__iter__, frozenset: frozenset.__iter__}
    left = [budget]

    class Refused(exception_):
        pass

    def spend(text):
        left[0] -= len_(text)
        if left[0] < 0:
            raise Refused("values larger than the %d bytes one run may send" % budget)
        return text

    def tagged(value, depth):
        if depth > max_depth:
            raise Refused("a value nested deeper than %d levels" % max_depth)
        t = type_(value)
        if t is none_type:
            return spend('["none"]')
        if t is bool_:
            return spend('["bool",true]' if value is True else '["bool",false]')
        # a subclass of a plain type is taken as its base value, read with the base type's methods
        if issubclass_(t, int_):
            return spend('["int","' + int_text(value) + '"]')
        if issubclass_(t, float_):
            return spend('["float","' + float_text(value) + '"]')
        if issubclass_(t, complex_):
            return spend('["complex","' + float_text(real(value)) + '","' + float_text(imag(value)) + '"]')
        if issubclass_(t, str_):
            return spend('["str",' + quote(exact_str(value)) + "]")
        if issubclass_(t, bytes_):
            return spend('["bytes","' + bytes_hex(value) + '"]')
        if issubclass_(t, dict_):
            pairs = ["[" + tagged(k, depth + 1) + "," + tagged(v, depth + 1) + "]" for k, v in dict_.items(value)]
            return spend('["dict",[') + join(pairs) + "]]"
        for base, tag in ((list_, "list"), (tuple_, "tuple"), (set_, "set"), (frozenset_, "frozenset")):
            if issubclass_(t, base):
                items = [tagged(item, depth + 1) for item in iterate[base](value)]
                return spend('["' + tag + '",[') + join(items) + "]]"
        raise Refused(exact_str(type_name(t)))

    def encode(value):
        try:
            return tagged(value, 0)
        except Refused as exc:
            why = exc_args(exc)[0]
        except base_exception as exc:  # RecursionError, MemoryError: the value cannot cross
            why = "a value that could not be encoded (" + exact_str(type_name(type_(exc))) + ")"
        return '["unencodable",' + quote(why) + "]"

    return encode


def make_describe():
    """``describe(exc)``: (type name, message) of an exception, as exact strs."""
    type_, issubclass_, len_, str_, base_exception, max_message = type, issubclass, len, str, BaseException, MAX_MESSAGE
    type_name, exc_args, exc_str = type.__dict__["__name__"].__get__, BaseException.args.__get__, BaseException.__str__
    exact_str = str.__str__

    def describe(exc):
        args = exc_args(exc)
        if len_(args) == 1 and issubclass_(type_(args[0]), str_):
            message = exact_str(args[0])  # no method of the program's runs for the usual case
        else:
            try:
                message = exact_str(exc_str(exc))
            except base_exception:
                message = ""
        return exact_str(type_name(type_(exc))), message[:max_message]

    return describe


def run_program(source, steps, marker, budget):
    """Phase 1: the program, then ``steps``: ("run", -1, statement) runs a test-side statement (its
    errors are phase 2's to report), ("value", k, expression) sends the expression's value as
    value k, ("exec", k, statement) sends whether the statement raised."""
    write, compile_, exec_, eval_, quote = os.write, compile, exec, eval, encode_basestring_ascii
    base_exception, memory_error = BaseException, MemoryError
    encode, describe = make_encoder(budget), make_describe()
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # big ints cross as decimal text

    def emit(text):
        data = ("\n" + marker + " " + text + "\n").encode("utf-8", "replace")
        while data:
            data = data[write(1, data):]

    def raised(exc):
        name, message = describe(exc)
        return '["raised",' + quote(name) + "," + quote(message) + "]"

    try:
        code = compile_(source, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        emit("syntax-error %s (line %s)" % (getattr(exc, "msg", exc), getattr(exc, "lineno", "?")))
        return
    compiled = [(kind, index, compile_(text, "<test>", "eval" if kind == "value" else "exec"))
                for kind, index, text in steps]
    namespace = {"__name__": "__main__"}
    try:
        exec_(code, namespace)
    except memory_error:
        raise
    except base_exception as exc:  # the steps still run: what was defined before the error may pass
        emit("solution-error %s: %s" % describe(exc))
    for kind, index, step in compiled:
        try:
            result = eval_(step, namespace) if kind == "value" else exec_(step, namespace)
        except memory_error:
            raise
        except base_exception as exc:
            if kind != "run":
                emit("value %d %s" % (index, raised(exc)))
            continue
        if kind != "run":
            emit("value %d %s" % (index, encode(result) if kind == "value" else '["ok"]'))


class CheckError(BaseException):
    """A value the checker cannot use: not plain data, missing, malformed, or a test the split
    refused. A BaseException, so a test's own ``except Exception`` cannot swallow it."""


class ProgramError(Exception):
    """The program's call raised an exception that is not a builtin one (its name and message)."""


PLAIN = "only plain data (None, bool, int, float, complex, str, bytes, and lists, tuples, dicts, sets of them) " \
        "crosses from the program to the checker"


def decode(node, depth=0):
    """Fresh builtin objects from a tagged value; ValueError or TypeError when it is malformed."""
    if depth > MAX_DEPTH or type(node) is not list or not node or type(node[0]) is not str:
        raise ValueError("malformed value")
    tag, args = node[0], node[1:]
    if tag == "none" and not args:
        return None
    if tag == "bool" and len(args) == 1 and type(args[0]) is bool:
        return args[0]
    if tag in ("int", "float", "str") and len(args) == 1 and type(args[0]) is str:
        return {"int": int, "float": float, "str": str}[tag](args[0])
    if tag == "complex" and len(args) == 2 and all(type(a) is str for a in args):
        return complex(float(args[0]), float(args[1]))
    if tag == "bytes" and len(args) == 1 and type(args[0]) is str:
        return bytes.fromhex(args[0])
    if tag in ("list", "tuple", "set", "frozenset") and len(args) == 1 and type(args[0]) is list:
        items = [decode(item, depth + 1) for item in args[0]]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and len(args) == 1 and type(args[0]) is list:
        pairs = [p if type(p) is list and len(p) == 2 else [None, None] for p in args[0]]
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
    raise ValueError("malformed value")


def rebuilt(name, message, label):
    """The exception a call's ("raised", name, message) re-raises in the checker."""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:
            pass
    elif isinstance(cls, type) and issubclass(cls, BaseException):  # SystemExit, KeyboardInterrupt...
        detail = ": " + message if message else ""
        return CheckError("`%s` raised %s%s, which no test can expect" % (label, name, detail))
    return ProgramError("%s: %s" % (name, message) if message else str(name))


class _JsonContext:
    """What json's C scanner reads from its decoder; our values hold only arrays, strings and literals."""

    strict, object_hook, object_pairs_hook, parse_float, parse_int = True, None, None, float, int

    @staticmethod
    def parse_constant(name):
        raise ValueError("malformed value")


def parse_json(text, _scan=_json.make_scanner(_JsonContext())):
    """json.loads for one value, without importing json; ValueError when it is malformed (the parent
    passes only text that parses: the C scanner's own error needs json.decoder, and says SystemError)."""
    try:
        node, end = _scan(text, 0)
    except (StopIteration, SystemError):
        raise ValueError("malformed value") from None
    if end != len(text):
        raise ValueError("malformed value")
    return node


def make_lookups(values, labels, missing):
    """(value, effect, refuse), the functions the rewritten tests call: ``value(k)`` is value k as
    fresh builtin objects, ``effect(k)`` re-raises what step k raised, ``refuse(why)`` fails a test."""
    def fetch(k, wanted):
        text = values[k]
        if text is None:
            raise CheckError("`%s`: %s" % (labels[k], missing))
        try:
            node = parse_json(text)
        except (ValueError, RecursionError):
            node = None
        if type(node) is list and len(node) == 3 and node[0] == "raised":
            raise rebuilt(node[1], node[2], labels[k])
        if wanted == "ok":
            if node != ["ok"]:
                raise CheckError("`%s`: malformed status from the program" % labels[k])
            return None
        if type(node) is list and len(node) == 2 and node[0] == "unencodable" and type(node[1]) is str:
            raise CheckError("`%s` cannot cross to the checker (%s): %s" % (labels[k], node[1], PLAIN))
        try:
            return decode(node)
        except (ValueError, TypeError, RecursionError):
            raise CheckError("`%s`: malformed value from the program" % labels[k]) from None

    def refuse(why):
        raise CheckError(why)

    return (lambda k: fetch(k, "value")), (lambda k: fetch(k, "ok")), refuse


def check(values, labels, missing, setup, tests, marker):
    """Phase 2: run the rewritten set-up, then each rewritten test; print pass/fail per test."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    write = os.write

    def emit(text):
        data = ("\n" + marker + " " + text + "\n").encode("utf-8", "replace")
        while data:
            data = data[write(1, data):]

    def detail(exc):
        text = str(exc)[:2 * MAX_MESSAGE if isinstance(exc, CheckError) else MAX_MESSAGE]  # ours: worth reading whole
        return type(exc).__name__ + (": " + text if text else "")

    value, effect, refuse = make_lookups(values, labels, missing)
    namespace = {"__name__": "__main__", "_rlkit_v": value, "_rlkit_do": effect, "_rlkit_refuse": refuse}
    try:
        exec(compile(setup, "<setup>", "exec"), namespace)
    except MemoryError:
        raise
    except BaseException as exc:  # the tests still run: what was set up before the error may pass
        emit("setup-error " + detail(exc))
    for i, test in enumerate(tests):
        try:
            exec(compile(test, "<test %d>" % i, "exec"), namespace)
            emit("pass %d" % i)
        except MemoryError:
            raise
        except BaseException as exc:
            emit("fail %d test %d failed: %s" % (i, i, detail(exc)))
