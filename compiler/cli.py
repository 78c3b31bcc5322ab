"""The `npuc` command line: compile a model, list targets and passes.

    npuc compile path/to/file.py:factory [--target npu-int8] [--out DIR] [--check] [--show]
                 [--simulate] [--emit-c DIR]
    npuc compile model.pt2 ...
    npuc emit-c path/to/file.py:factory --out DIR [--target npu-int8] [--no-check]
    npuc compare path/to/file.py:factory [--target npu-int8] [--passes ...]
    npuc simulate path/to/file.py:factory [--target npu-int8] [--json] [--sparsity MODE]
    npuc targets [NAME]
    npuc passes

A factory is a function in a Python file returning `(model, example_inputs)`. `--target` takes a
built-in target's name or the path of a target file (`my-npu.toml`).

An error prints as one message: the error's own text (an UnsupportedError's op, module and what
to do; a failed pass's name, cause and the passes before it), exit status 2; an error that is
npuc's own fault says so, exit status 1. `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np


def load_model(spec: str) -> tuple[Any, tuple]:
    """`file.py:factory` -> factory(); `file.pt2` -> (ExportedProgram, its example inputs)."""
    import torch

    if spec.endswith(".pt2"):
        program = torch.export.load(spec)
        args = program.example_inputs[0] if program.example_inputs else None
        if args is None:
            raise SystemExit(f"{spec}: the .pt2 holds no example inputs; export it with them")
        return program, tuple(args)
    path, _, factory = spec.rpartition(":")
    if not path or not factory:
        raise SystemExit(f"model {spec!r}: expected path/to/file.py:factory or file.pt2")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None or not Path(path).exists():
        raise SystemExit(f"model {spec!r}: no such file {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(Path(path).resolve().parent))
    module_spec.loader.exec_module(module)
    if not hasattr(module, factory):
        raise SystemExit(f"model {spec!r}: {path} has no function {factory}")
    model, inputs = getattr(module, factory)()
    return model, tuple(inputs) if isinstance(inputs, list | tuple) else (inputs,)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| (0 when both are zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    denom = np.linalg.norm(want)
    return float(np.linalg.norm(got - want) / denom) if denom else float(np.linalg.norm(got))


def leaves(outputs: Any) -> list[np.ndarray]:
    """The arrays of what cm.run returned (an array, a tuple, or a model's dict), in output
    order: the order torch flattens the model's own outputs in, and the C writes them in."""
    if isinstance(outputs, dict):
        return [a for v in outputs.values() for a in leaves(v)]
    if isinstance(outputs, tuple | list):
        return [a for v in outputs for a in leaves(v)]
    return [outputs]


def _reference(model: Any, inputs: tuple) -> list[np.ndarray]:
    import torch

    runnable = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    with torch.no_grad():
        out = runnable(*inputs)
    return [t.numpy() for t in torch.utils._pytree.tree_leaves(out)]


def cmd_compile(args: argparse.Namespace) -> int:
    import npuc

    model, inputs = load_model(args.model)
    print(f"compiling {args.model} for {args.target} ...", flush=True)
    cm = npuc.compile(model, inputs, target=args.target, passes=args.passes, debug=args.debug,
                      name=Path(args.model.split(":")[0]).stem.replace("-", "_"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for i, stage in enumerate(cm.stages):
            (out / f"{i:02d}_{stage.replace('#', '_')}.ir").write_text(cm.dump(stage))
        print(f"wrote {len(cm.stages)} stage dumps to {out}/")
    if args.show:
        print(cm.dump(args.show), end="")
    print(cm.report())
    if args.simulate:
        print(cm.simulate())
    status = 0
    if args.emit_c:
        status = emit_and_check(cm, inputs, Path(args.emit_c))
    if args.check:
        outputs = leaves(cm.run(*inputs))
        errors = [relative_error(o, r) for o, r in zip(outputs, _reference(model, inputs),
                                                         strict=True)]
        worst = max(errors)
        tolerance = args.tolerance if args.tolerance is not None else (
            QUANTIZED_TOLERANCE if "origins" in cm.ir.meta else 1e-5)
        verdict = "OK" if worst <= tolerance else "MISMATCH"
        print(f"check against PyTorch: max relative error {worst:.2e} "
              f"(tolerance {tolerance:.0e}) {verdict}")
        return status or (0 if worst <= tolerance else 1)
    return status


def emit_and_check(cm: Any, inputs: tuple, out: Path, check: bool = True) -> int:
    """Write the C project, and with `check` build it (make), run it on `inputs` and compare its
    outputs with the interpreter's bit for bit; 1 on any difference."""
    import shutil
    import subprocess
    import time

    project = cm.emit_c(out)
    print(f"wrote a C project to {project}/ (model.c, model.h, weights.c, weights.h, main.c, "
          "Makefile)")
    if not check:
        return 0
    if shutil.which("make") is None or shutil.which("cc") is None:
        raise SystemExit("emit-c --check needs make and a C compiler (cc) on the PATH")
    start = time.perf_counter()
    built = subprocess.run(["make", "-s", "-C", str(project)], capture_output=True, text=True)
    if built.returncode:
        print(built.stdout + built.stderr, file=sys.stderr)
        return 1
    arrays = [np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in inputs]
    np.concatenate([a.astype("<f4").ravel() for a in arrays]).tofile(project / "in.bin")
    print(f"built {project}/model in {time.perf_counter() - start:.1f} s; running it ...")
    subprocess.run([str(project / "model"), str(project / "in.bin"), str(project / "out.bin")],
                   check=True)
    got = np.fromfile(project / "out.bin", dtype="<f4")
    expected = np.concatenate([np.asarray(e, np.float32).ravel()
                               for e in leaves(cm.run(*arrays))])
    same = got.size == expected.size and np.array_equal(got.view(np.int32),
                                                        expected.view(np.int32))
    print(f"C output vs interpreter: {'bit-identical' if same else 'DIFFERENT'} "
          f"({expected.size} values)")
    return 0 if same else 1


def cmd_emit_c(args: argparse.Namespace) -> int:
    import npuc

    model, inputs = load_model(args.model)
    print(f"compiling {args.model} for {args.target} ...", flush=True)
    cm = npuc.compile(model, inputs, target=args.target, passes=args.passes,
                      debug=args.debug)
    return emit_and_check(cm, inputs, Path(args.out), check=not args.no_check)


QUANTIZED_TOLERANCE = 0.05  # --check's default for integer targets: relative error of the outputs


def cmd_simulate(args: argparse.Namespace) -> int:
    import npuc

    model, inputs = load_model(args.model)
    print(f"compiling {args.model} for {args.target} ...", flush=True)
    report = npuc.compile(model, inputs, target=args.target, passes=args.passes,
                          debug=args.debug).simulate(args.sparsity)
    print(report.to_json() if args.json else report)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import npuc

    model, inputs = load_model(args.model)
    print(f"compiling {args.model} for {args.target} (calibrating on the example inputs) ...",
          flush=True)
    cm = npuc.compile(model, inputs, target=args.target, passes=args.passes,
                      debug=args.debug)
    print(cm.compare(*inputs))
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from npuc import targets

    for name in [args.name] if args.name else targets.names():
        print(targets.get(name))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from npuc import passes

    for name in passes.names():
        info = passes.get(name)
        opts = ", ".join(f"{k}={d!r}" for k, (_, d) in info.options.items())
        print(f"{name:<16} {info.description}{'  [' + opts + ']' if opts else ''}")
    return 0


TARGET_HELP = "a built-in target (npuc targets) or a target file, e.g. my-npu.toml"
DEBUG_HELP = "verify the graph after every pass; show the full traceback of an error"


def _model_command(sub: Any, name: str, help: str, fn: Any) -> argparse.ArgumentParser:
    """A subcommand that compiles a model for a target: its model, --target and --passes."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("model", help="path/to/file.py:factory or model.pt2")
    parser.add_argument("--target", default="npu-int8", help=TARGET_HELP)
    parser.add_argument("--passes", default=None, help="pipeline (default: the target's)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npuc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="capture a model, run a pipeline, write the stage dumps")
    c.add_argument("model", help="path/to/file.py:factory or model.pt2")
    c.add_argument("--target", default="npu-int8", help=TARGET_HELP)
    c.add_argument("--passes", default=None, help='pipeline, e.g. "cse,dce" (default: target\'s)')
    c.add_argument("--out", help="folder for the per-stage IR dumps")
    c.add_argument("--show", nargs="?", const="lowered", metavar="STAGE",
                   help="print a stage's IR (default: lowered)")
    c.add_argument("--check", action="store_true",
                   help="run the compiled graph and compare with PyTorch on the example inputs")
    c.add_argument("--tolerance", type=float, default=None,
                   help=f"for --check (default 1e-5 float, {QUANTIZED_TOLERANCE} integer targets)")
    c.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    c.add_argument("--simulate", action="store_true", help="print the simulator's report")
    c.add_argument("--emit-c", metavar="DIR", help="write the C project to DIR, build it, run it "
                   "on the example inputs and check it against the interpreter bit for bit")
    c.set_defaults(fn=cmd_compile)
    m = _model_command(sub, "simulate", "cycles, energy and memory per layer on the target",
                       cmd_simulate)
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    from npuc.targets import SPARSITY_MODES

    m.add_argument("--sparsity", choices=SPARSITY_MODES, help="what the NPU does with zero "
                   "weights, instead of the target's npu.sparsity (every mode's totals are "
                   "listed either way)")
    _model_command(sub, "compare", "where a quantized model loses accuracy, op by op",
                   cmd_compare)
    e = _model_command(sub, "emit-c", "write the C project; build, run and check it", cmd_emit_c)
    e.add_argument("--out", required=True, help="folder for the C project")
    e.add_argument("--no-check", action="store_true", help="only write the project")
    t = sub.add_parser("targets", help="list the built-in targets or show one")
    t.add_argument("name", nargs="?", help="a built-in target or a target file (.toml)")
    t.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    t.set_defaults(fn=cmd_targets)
    p = sub.add_parser("passes", help="list the registered passes")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    p.set_defaults(fn=cmd_passes)
    args = parser.parse_args(argv)
    if args.debug:  # the user asked for the traceback
        return args.fn(args)
    try:
        return args.fn(args)
    except Exception as e:  # every error becomes one message; --debug shows where it came from
        message, status = describe_error(e)
        print(f"npuc: error: {message}", file=sys.stderr)
        return status


def describe_error(e: BaseException) -> tuple[str, int]:
    """(message, exit status) for an error that stopped a command: 2 with the error's own text
    when the user can act on it (an op npuc cannot compile, a bad target, option or input), 1
    with a request to report it otherwise."""
    from npuc.errors import UnsupportedError
    from npuc.pipeline import PassError

    user_errors = (UnsupportedError, ValueError, TypeError, KeyError, OSError)
    cause = e.__cause__ if isinstance(e, PassError) and e.__cause__ is not None else e
    if isinstance(e, PassError):
        text = str(e)  # names the pass, the cause with its type, and the passes run before it
    elif isinstance(e, KeyError) and e.args:
        text = str(e.args[0])  # str(KeyError) would quote the message
    elif isinstance(e, user_errors):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    if isinstance(cause, user_errors):
        return text, 2
    return (f"{text}\n  this is an internal error of npuc: rerun with --debug for the traceback "
            "and please report it"), 1
