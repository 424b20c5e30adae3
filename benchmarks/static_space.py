"""Size of the static Space (`fmhub spaces build --static --scenario all`) built from the real embedded defaults.

A static Space is downloaded by every visitor before its first answer, so its size is the cost that matters: the
goal is at most 40 MB for all three scenarios (onnxruntime-web's wasm, the page, the int8 models and their files).
The models are the cached embedded defaults (`FMHUB_HOME`, default ~/.cache/fmhub); nothing is trained here: a
scenario whose page exists but whose default is not cached stops the script with the command that trains it. A
default without an ONNX export is exported first (in place, as `fmhub export` does).

    python benchmarks/static_space.py --output benchmarks/results/static_space.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

GOAL_MB = 40.0


def parts(folder: Path) -> list[tuple[str, int]]:
    """(part, bytes) of the built folder: the runtime, the page, each model's graph and its other files."""
    from fmhub.static_space import folder_size

    runtime, models = folder_size(folder / "ort"), folder_size(folder / "models")
    page = folder_size(folder) - runtime - models
    rows = [("onnxruntime-web (ort/)", runtime), ("page (index.html, app/, ...)", page)]
    for model in sorted(p for p in (folder / "models").glob("*") if p.is_dir()):
        graph = folder_size(model / "onnx")
        rows += [(f"{model.name}: ONNX graph", graph), (f"{model.name}: settings, tokenizer, ...",
                                                        folder_size(model) - graph)]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--work-dir", help="build the Space here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)

    from fmhub.errors import FmhubError
    from fmhub.model_folder import ModelFolder
    from fmhub.paths import default_model_dir
    from fmhub.registry import list_scenarios
    from fmhub.static_space import build_static_space, folder_size, has_page

    with_page = [s for s in list_scenarios() if has_page(s)]
    missing = [s for s in with_page if not ModelFolder(default_model_dir(s)).is_fmhub_model()]
    if missing:
        print(f"static_space: no cached embedded default for {', '.join(missing)} under "
              f"{default_model_dir(missing[0]).parent}; train it first (`fmhub train --scenario {missing[0]}`), "
              "this benchmark trains nothing", file=sys.stderr)
        return 2
    info = common.machine()
    common.print_header("Static Space size (all scenarios, embedded defaults)", info)
    with tempfile.TemporaryDirectory(prefix="fmhub-static-bench-") as tmp:
        folder = Path(args.work_dir or tmp) / "static-space"
        try:
            build_static_space("all", folder, {s: None for s in list_scenarios()}, overwrite=False)
        except FmhubError as err:
            print(f"static_space: {err}", file=sys.stderr)
            return 2
        rows = parts(folder)
        total = folder_size(folder)
    not_built = [s for s in list_scenarios() if s not in with_page]
    table = [[name, common.fmt(size / 1e6, 2)] for name, size in rows]
    table.append(["**total**", f"**{total / 1e6:.2f}**"])
    print(common.markdown_table(["part", "MB"], table))
    verdict = "within" if total / 1e6 <= GOAL_MB else "over"
    print(f"\n{total / 1e6:.1f} MB: {verdict} the {GOAL_MB:.0f} MB goal"
          + (f" (not built yet, so not counted: {', '.join(not_built)})" if not_built else ""))
    common.write_json(args.output, {
        "benchmark": "static_space", "machine": info, "goal_mb": GOAL_MB, "total_bytes": total,
        "within_goal": total / 1e6 <= GOAL_MB, "scenarios_built": with_page, "scenarios_not_built": not_built,
        "parts": [{"part": name, "bytes": size} for name, size in rows],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
