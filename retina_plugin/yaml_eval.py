"""
detectron2's model-zoo yamls compute values with a YAML Python tag, for example
Base-RetinaNet.yaml's anchor sizes:

    SIZES: !!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64]]"]

detectron2 evaluates such a tag with Python's eval (yaml.unsafe_load), which runs any code in
the file. Here it is evaluated by a small interpreter of its own that knows only numbers,
+ - * / ** and unary minus, lists, tuples and list comprehensions over them, and no names but
the comprehension's own variables: no calls, no attributes, no imports. Anything else is
refused with the file, the line and the reason. Every other Python tag stays refused.
"""
import ast
import contextlib
import operator

import yaml

EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
ALLOWED = "only numbers, + - * / ** and unary minus, lists, tuples and list comprehensions over them"
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# A bound on exponents, so that a file cannot make the loader compute 10 ** 10 ** 10.
MAX_EXPONENT = 64
MAX_ITEMS = 100_000


class RestrictedEvalError(ValueError):
    """An eval expression that the restricted interpreter refuses; says why."""


def _describe(node) -> str:
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return f"an attribute ({node.attr!r})"
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r} (not a number)"
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        op = node.op
        return f"the operator {type(op).__name__}"
    return f"a {type(node).__name__} expression"


def restricted_eval(expression: str):
    """The value of `expression` (numbers, arithmetic, lists, tuples, list comprehensions)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise RestrictedEvalError(f"it is not a Python expression ({e.msg})") from None
    return _evaluate(tree.body, {})


def _number(value, node):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RestrictedEvalError(f"{_describe(node)} is applied to {type(value).__name__}s; {ALLOWED} are evaluated")
    return value


def _evaluate(node, names):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _number(_evaluate(node.left, names), node), _number(_evaluate(node.right, names), node)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > 2**MAX_EXPONENT):
            raise RestrictedEvalError(f"the power {left} ** {right} is too large to compute")
        try:
            return _BINARY[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError) as e:
            raise RestrictedEvalError(f"the arithmetic fails ({e})") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_evaluate(node.operand, names), node))
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_evaluate(element, names) for element in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.ListComp):
        return _comprehension(node, names)
    raise RestrictedEvalError(f"it uses {_describe(node)}; {ALLOWED} are evaluated")


def _comprehension(node: ast.ListComp, names):
    results = []

    def loop(index, scope):
        if index == len(node.generators):
            results.append(_evaluate(node.elt, scope))
            if len(results) > MAX_ITEMS:
                raise RestrictedEvalError(f"the list comprehension makes more than {MAX_ITEMS} items")
            return
        generator = node.generators[index]
        if generator.is_async or generator.ifs or not isinstance(generator.target, ast.Name):
            what = "an async comprehension" if generator.is_async else "a condition" if generator.ifs else "an unpacking target"
            raise RestrictedEvalError(f"the list comprehension has {what}; {ALLOWED} are evaluated")
        iterable = _evaluate(generator.iter, scope)
        if not isinstance(iterable, (list, tuple)):
            raise RestrictedEvalError(f"the list comprehension iterates over a {type(iterable).__name__}")
        for value in iterable:
            loop(index + 1, {**scope, generator.target.id: value})

    loop(0, dict(names))
    return results


def _construct_eval(loader, node):
    where = node.start_mark
    arguments = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else [loader.construct_scalar(node)]
    if len(arguments) != 1 or not isinstance(arguments[0], str):
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/object/apply:eval takes one expression string, got {arguments!r}", where
        )
    try:
        return restricted_eval(arguments[0])
    except RestrictedEvalError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"!!python/object/apply:eval {arguments[0]!r} is not evaluated: {e}", where
        ) from None


@contextlib.contextmanager
def restricted_eval_tag():
    """While open, yaml.safe_load (which detectron2's config loading uses) evaluates the eval
    tag with restricted_eval; every other Python tag is still refused."""
    constructors = yaml.SafeLoader.yaml_constructors
    had = EVAL_TAG in constructors
    previous = constructors.get(EVAL_TAG)
    yaml.SafeLoader.add_constructor(EVAL_TAG, _construct_eval)
    try:
        yield
    finally:
        if had:
            yaml.SafeLoader.yaml_constructors[EVAL_TAG] = previous
        else:
            yaml.SafeLoader.yaml_constructors.pop(EVAL_TAG, None)
