# The unmask test harness: runs `argv[1]` (candidate code), then `argv[2]` (a test, e.g. an
# assert), and proves that the test ran and held by writing the per-run secret, read from stdin
# before any candidate code runs, on the real stdout, then exiting 0. The sandbox counts a pass
# only when stdout is exactly that secret and a newline (see `Sandbox::run_test`).
#
# What this defends against (a test scores 0):
# - early exits (`sys.exit`, `os._exit`, `raise SystemExit`, signals), `sys.excepthook`, `atexit`
#   hooks and exceptions of any kind: no path but "the test finished" writes the secret, and the
#   secret is not in argv, the environment, a file or stdin (consumed) while the candidate runs;
# - output forgery: the candidate's stdout goes to stderr; the secret channel is the only copy of
#   the real stdout, and anything but the secret on it is a failure;
# - patched or shadowed builtins and rebound harness names: the test runs in its own globals
#   (the candidate's names minus those that shadow builtins) with a pristine copy of the builtins
#   taken before the candidate ran; the harness's helpers are constants of the compiled test
#   (not global names) and use references captured before the candidate ran;
# - objects that fake results ("always equal" `__eq__`, `__bool__`, `__lt__`, `__contains__`):
#   every comparison operand in the test (except for `is` / `is not`) and every value whose truth
#   the test uses (`assert x`, `not x`, `and`/`or`, `if` expressions) must be plain data: exact
#   `int`, `float`, `complex`, `bool`, `str`, `bytes`, `bytearray`, `None`, `range`, or
#   `list`/`tuple`/`set`/`frozenset`/`dict` of plain data; anything else fails the test.
#
# What it does not defend against (documented in docs/reliability.md): code that walks the
# interpreter's own state to reach the harness (frames via `sys._getframe` or tracebacks, then the
# harness's locals or the helpers' closures), code that corrupts memory, and monkeypatching of
# library modules that the test itself calls (`math.isclose = ...`). The audit hook below refuses
# the most direct of these routes (gc object walks, tracing/profiling hooks, other threads'
# frames, ctypes, /proc/*/mem), which raises the bar but is not a boundary (PEP 578). Honest code
# whose results are not plain data (numpy scalars, custom classes compared with `==`) fails.
import os as _os, sys as _sys


def _unmask_main():
    import ast, builtins, operator, types, warnings

    read, write, exit_, dup, dup2, open_, close = (
        _os.read, _os.write, _os._exit, _os.dup, _os.dup2, _os.open, _os.close)
    type_, len_, bool_, exec_, compile_, dict_, str_, repr_ = (
        type, len, bool, exec, compile, dict, str, repr)
    tuple_, isinstance_, range_, AssertionError_, BaseException_, PermissionError_ = (
        tuple, isinstance, range, AssertionError, BaseException, PermissionError)
    contains = operator.contains
    CodeType = types.CodeType

    # The secret: one line the parent wrote before closing the pipe.
    buf = b""
    while len_(buf) < 256 and not buf.endswith(b"\n"):
        chunk = read(0, 256)
        if not chunk:
            break
        buf += chunk
    secret = buf.strip()
    buf = None
    if len_(secret) < 16:
        exit_(97)
    null = open_("/dev/null", _os.O_RDONLY)
    dup2(null, 0)
    close(null)
    # The verdict channel: the only copy of the real stdout; the program's output goes to stderr.
    verdict = dup(1)
    dup2(2, 1)

    code, test = _sys.argv[1], _sys.argv[2]

    scalars = (int, float, complex, bool, str, bytes, bytearray, type(None), range)
    sequences = (list, tuple, set, frozenset)

    def plain(v):
        budget = [1 << 22]

        def walk(v, depth):
            t = type_(v)
            for s in scalars:
                if t is s:
                    return True
            budget[0] -= 1
            if depth > 100 or budget[0] < 0:
                return False
            for s in sequences:
                if t is s:
                    for x in v:
                        if not walk(x, depth + 1):
                            return False
                    return True
            if t is dict:
                for k in v:
                    if not walk(k, depth + 1) or not walk(dict_.__getitem__(v, k), depth + 1):
                        return False
                return True
            return False

        return walk(v, 0)

    def refuse(v):
        raise AssertionError_(
            "unmask harness: a " + str_(type_(v).__name__) + " is not plain data")

    def truth(v):
        if type_(v) is bool:
            return v
        if not plain(v):
            refuse(v)
        return bool_(v)

    ops = {
        "Eq": operator.eq, "NotEq": operator.ne, "Lt": operator.lt, "LtE": operator.le,
        "Gt": operator.gt, "GtE": operator.ge, "Is": operator.is_, "IsNot": operator.is_not,
        "In": lambda a, b: contains(b, a),
        "NotIn": lambda a, b: not contains(b, a),
    }
    identity = ("Is", "IsNot")

    def compare(names, *vals):
        for i in range_(len_(names)):
            if names[i] not in identity:
                for v in (vals[i], vals[i + 1]):
                    if not plain(v):
                        refuse(v)
            r = ops[names[i]](vals[i], vals[i + 1])
            if type_(r) is not bool:
                r = truth(r)
            if not r:
                return False
        return True

    TRUTH = "\x00unmask-truth"
    COMPARE = "\x00unmask-compare"

    class Guard(ast.NodeTransformer):
        def call(self, name, args):
            return ast.Call(func=ast.Constant(value=name), args=args, keywords=[])

        def truth(self, node):
            return self.call(TRUTH, [self.visit(node)])

        def visit_Assert(self, node):
            node.test = self.truth(node.test)
            if node.msg is not None:
                node.msg = self.visit(node.msg)
            return node

        def visit_UnaryOp(self, node):
            if isinstance_(node.op, ast.Not):
                node.operand = self.truth(node.operand)
                return node
            return self.generic_visit(node)

        def visit_BoolOp(self, node):
            node.values = [self.truth(v) for v in node.values]
            return node

        def visit_IfExp(self, node):
            node.test = self.truth(node.test)
            node.body = self.visit(node.body)
            node.orelse = self.visit(node.orelse)
            return node

        def visit_Compare(self, node):
            names = ast.Constant(value=tuple_(type_(o).__name__ for o in node.ops))
            args = [names, self.visit(node.left)] + [self.visit(c) for c in node.comparators]
            return self.call(COMPARE, args)

    helpers = {TRUTH: truth, COMPARE: compare}

    def bind(co):
        consts = []
        for c in co.co_consts:
            if type_(c) is str and c in helpers:
                c = helpers[c]
            elif type_(c) is CodeType:
                c = bind(c)
            consts.append(c)
        return co.replace(co_consts=tuple_(consts))

    try:
        tree = ast.fix_missing_locations(Guard().visit(ast.parse(test, "<test>")))
        with warnings.catch_warnings():
            # Calling a constant is what the helpers look like before `bind`.
            warnings.simplefilter("ignore")
            test_code = bind(compile_(tree, "<test>", "exec"))
        candidate = compile_(code, "<string>", "exec")
    except BaseException_:
        exit_(96)

    pristine = dict_(builtins.__dict__)

    refused = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
               "sys.settrace", "sys.setprofile", "threading.settrace", "threading.setprofile",
               "ctypes.", "sys.addaudithook")
    startswith = str_.startswith

    def hook(event, args):
        if startswith(event, refused):
            raise PermissionError_("unmask harness: " + event + " refused")
        if event == "open" and args and type_(args[0]) is str_:
            p = args[0]
            if startswith(p, "/proc/") and p.endswith("/mem"):
                raise PermissionError_("unmask harness: " + p + " refused")

    _sys.addaudithook(hook)

    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    _sys.modules["__main__"] = module
    g = module.__dict__
    try:
        exec_(candidate, g)
    except BaseException_ as e:
        write(2, ("unmask harness: the code raised " + repr_(type_(e)) + "\n").encode())
        exit_(1)
    tg = {k: v for k, v in g.items() if k not in pristine or startswith(k, "__")}
    tg["__builtins__"] = dict_(pristine)
    try:
        exec_(test_code, tg)
    except BaseException_ as e:
        why = repr_(type_(e))
        if type_(e) is AssertionError_ and len_(e.args) == 1 and type_(e.args[0]) is str_:
            why += ": " + e.args[0]
        write(2, ("unmask harness: the test raised " + why + "\n").encode())
        exit_(1)
    write(verdict, secret + b"\n")
    exit_(0)


_unmask_main()
