# Function-level training pairs from Python files (unmask-train pairs; see function_pairs.rs).
#
# Reads a JSON object from stdin: {"files": [paths], "max_body_lines": N}. For every function
# (def or async def, at any depth) whose body starts with a docstring and has statements after
# it, writes one JSON line to stdout:
#   {"prompt": signature + docstring, "response": the rest of the body, "source": path,
#    "name": qualified name, "line": 1-based line of the def}
# both dedented to the def's own indentation, so that prompt + response is the function's source
# as a top-level definition. Decorators are left out. Files are only parsed (ast), never run.
# Files that do not parse are counted on stderr as {"unparsable": N}.
import ast
import json
import sys


def pairs(path, source, max_body_lines):
    tree = ast.parse(source, filename=path)
    lines = source.splitlines(keepends=True)
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop(0)
        for child in ast.iter_child_nodes(node):
            name = prefix + getattr(child, "name", "")
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from one(path, child, name, lines, max_body_lines)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                stack.append((child, name + "."))


def one(path, fn, name, lines, max_body_lines):
    body = fn.body
    if len(body) < 2:
        return
    doc = body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)):
        return
    doc_end, end = doc.end_lineno, fn.end_lineno
    # Nothing after the docstring on its last line, and the body proper on later lines.
    if lines[doc_end - 1].encode("utf-8")[doc.end_col_offset:].strip() or body[1].lineno <= doc_end:
        return
    if end - doc_end > max_body_lines:
        return
    # Dedent to the def's own column; a line indented less (a docstring or string continuation
    # at column 0 inside a method) cannot be moved, so such functions are skipped.
    prefix = lines[fn.lineno - 1][: fn.col_offset]
    if prefix.strip():
        return

    def moved(block):
        out = []
        for line in block:
            if line.strip() and not line.startswith(prefix):
                return None
            out.append(line[len(prefix):] if line.strip() else line)
        return "".join(out)

    head = moved(lines[fn.lineno - 1:doc_end])
    tail = moved(lines[doc_end:end])
    if head is None or tail is None or not tail.strip():
        return
    yield {"prompt": head, "response": tail, "source": path, "name": name, "line": fn.lineno}


def main():
    job = json.load(sys.stdin)
    unparsable = 0
    out = sys.stdout
    for path in job["files"]:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            found = list(pairs(path, source, job["max_body_lines"]))
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            unparsable += 1
            continue
        for p in found:
            out.write(json.dumps(p, ensure_ascii=False) + "\n")
    sys.stderr.write(json.dumps({"unparsable": unparsable}) + "\n")


main()
