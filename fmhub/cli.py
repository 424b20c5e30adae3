"""`fmhub` command line: train | evaluate | predict | export | push | serve | spaces. Also `python -m fmhub`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

from fmhub.config import TrainConfig, load_yaml, resolve_config
from fmhub.errors import FmhubError
from fmhub.model_folder import WRITE_ERRNOS, OutputFolder, describe_write_error
from fmhub.registry import list_scenarios
from fmhub.replies import DEFAULT_REPLY_MODE, add_reply_flags

RUNTIMES = ("torch", "onnx")  # fmhub.export.RUNTIMES, without importing torch for --help


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one clear line, not a usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _field_type(field: dataclasses.Field):
    hint = typing.get_type_hints(TrainConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    return hint


def add_train_flags(parser: argparse.ArgumentParser, scenarios: list[str]) -> None:
    parser.add_argument("--config", help="YAML file with any of these settings (flags win over it)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        help_text = field.metadata.get("help", "")
        if field.name == "scenario":
            parser.add_argument(flag, choices=scenarios, default=None,
                                help=f"{' | '.join(scenarios)} (default: {field.default})")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{help_text} (default: {field.default})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fmhub", description="Fine-tune foundation-model backbones and serve them as Gradio demos.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    scenarios = list_scenarios()  # the registry: names only, no torch import

    train = sub.add_parser("train", help="fine-tune a backbone (also under `accelerate launch -m fmhub train`)")
    add_train_flags(train, scenarios)

    evaluate = sub.add_parser("evaluate", help="score a saved model; writes all_results.json and plots")
    evaluate.add_argument("--scenario", choices=scenarios, required=True)
    evaluate.add_argument("--model", help="saved folder or Hub id (default: the cached embedded default)")
    evaluate.add_argument("--data", help="Hub dataset id, folder or file (default: the embedded test split)")
    evaluate.add_argument("--output-dir", help="where the metrics go (default: ./fmhub_eval/<scenario>)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--runtime", choices=RUNTIMES, default=None,
                          help="torch (default) or onnx: the folder's ONNX export on ONNX Runtime (`fmhub export`)")

    predict = sub.add_parser("predict", help="label a JSONL file of inputs")
    predict.add_argument("--scenario", choices=scenarios, required=True)
    predict.add_argument("--model", help="saved folder or Hub id (default: the cached embedded default)")
    predict.add_argument("--input-file", required=True, help='JSONL: {"text": ...} or {"path": ...} per line')
    predict.add_argument("--output", required=True, help="JSONL written with one result per input line")
    add_reply_flags(predict)
    predict.add_argument("--runtime", choices=RUNTIMES, default=None,
                         help="torch (default) or onnx: the folder's ONNX export on ONNX Runtime (`fmhub export`)")

    export = sub.add_parser("export", help="write onnx/model.onnx and the int8 onnx/model_quantized.onnx into a "
                                           "saved model folder, checked against PyTorch on the test split")
    export.add_argument("--model", required=True, help="saved model folder")
    export.add_argument("--quantize", choices=("int8", "none"), default="int8",
                        help="int8 (default; falls back to fp32 when it disagrees with PyTorch) or none")
    export.add_argument("--data", help="data for the parity check (default: the model's own test split)")

    push = sub.add_parser("push", help="push a saved model folder to the Hugging Face Hub")
    push.add_argument("--model", required=True, help="saved model folder")
    push.add_argument("--repo-id", required=True, help="user/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to (created if missing)")

    spaces = sub.add_parser("spaces", help="Hugging Face Spaces: build or deploy one scenario's Space, or the whole "
                                           "hub (--scenario all) as one Space")
    spaces_sub = spaces.add_subparsers(dest="spaces_command", required=True, parser_class=_Parser)
    space_scenarios = [*scenarios, "all"]
    model_help = ("the model a tab serves: --model SCENARIO=ID, once per tab (e.g. --model customer-service=user/cs); "
                  "a single-scenario Space also takes --model ID; tabs not named serve the embedded default")
    static_help = "a static Space (HTML and JavaScript, no server: free to host on any account), not a Gradio app"
    deploy = spaces_sub.add_parser("deploy", help="create the Space repo and upload a self-contained folder")
    deploy.add_argument("--scenario", choices=space_scenarios, required=True,
                        help=f"{' | '.join(scenarios)} | all (every tab, as `python app.py`)")
    deploy.add_argument("--space-id", required=True, help="user/name of the Space")
    deploy.add_argument("--model", action="append", help=model_help + " (Hub ids, linked in the Space's README)")
    deploy.add_argument("--private", action="store_true")
    deploy.add_argument("--static", action="store_true", help=static_help)
    build = spaces_sub.add_parser("build", help="write the self-contained Space folder locally")
    build.add_argument("--scenario", choices=space_scenarios, required=True,
                       help=f"{' | '.join(scenarios)} | all (every tab, as `python app.py`)")
    build.add_argument("--output-dir", required=True)
    build.add_argument("--model", action="append", help=model_help + " (Hub ids or folders)")
    build.add_argument("--overwrite", action="store_true",
                       help="write into a non-empty folder fmhub did not create (app.py, README.md, ... are replaced)")
    build.add_argument("--static", action="store_true", help=static_help)

    serve = sub.add_parser("serve", help="run the hub app (same as python app.py)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--runtime", choices=RUNTIMES, default=None, help="torch (default) or onnx")
    add_reply_flags(serve, DEFAULT_REPLY_MODE)
    for name in scenarios:
        serve.add_argument(f"--{name}-model", help=f"folder or Hub id for the {name} tab")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from fmhub.registry import get_scenario

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config")}
    yaml_values = load_yaml(args.config) if args.config else {}
    scenario = given.get("scenario") or yaml_values.get("scenario") or TrainConfig.scenario
    config = resolve_config(get_scenario(scenario).defaults, yaml_values, given)
    main_process = os.environ.get("RANK", "0") == "0"  # under `accelerate launch` the main process checks
    if main_process and config.output_dir:
        OutputFolder(config.output_dir).check_unlocked()  # a running run's folder: refused before torch is imported
    from fmhub.runner import check_output_dir, train

    if config.semi_supervised:  # rounds of self-training, each a run of the runner
        from fmhub.semi_supervised import train_semi_supervised as train
    if main_process:
        check_output_dir(config)
    train(config)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from fmhub.defaults import model_folder_for
    from fmhub.metrics import headline
    from fmhub.runner import evaluate

    folder = model_folder_for(args.model, args.scenario)
    results = evaluate(args.scenario, folder, args.data, args.output_dir, args.batch_size, args.runtime)
    if "output_dir" in results:
        summary = {
            **headline(results),
            **{k: v for k, v in results.items() if k.startswith(("oos_", "local", "false"))},
        }
        print(json.dumps(summary, indent=2))
        print(f"written to {results['output_dir']}/all_results.json", file=sys.stderr)
    return 0


def read_inputs(path: Path, key: str) -> list:
    if not path.is_file():
        raise FmhubError(f"input file not found: {path}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise FmhubError(f"{path}:{number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or key not in row:
            raise FmhubError(f"{path}:{number} needs a {key!r} field")
        value = row[key]
        if key == "path" and isinstance(value, str) and not Path(value).is_absolute():
            value = str(path.parent / value)  # relative to the input file's folder
        items.append(value)
    return items


def run_predict(args: argparse.Namespace) -> int:
    from fmhub.registry import get_scenario
    from fmhub.serving import load_predictor

    scenario = get_scenario(args.scenario)
    items = read_inputs(Path(args.input_file), scenario.input_key)
    predictor = load_predictor(args.scenario, args.model, args.runtime)
    results = predictor.predict(items)
    if args.scenario == "customer-service" and args.replies == "generate":  # opt-in here: a batch waits for the model
        from fmhub.replies import ReplyWriter, add_replies

        writer = ReplyWriter(args.reply_model or os.environ.get("FMHUB_REPLY_MODEL"))
        if not writer.wait():
            raise FmhubError(f"the reply model could not be loaded: {writer.error}")
        add_replies(writer, items, results)
    with open(args.output, "w", encoding="utf-8") as fh:
        for result in results:
            fh.write(json.dumps(result, ensure_ascii=False) + "\n")
    print(f"{len(results)} predictions written to {args.output}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from fmhub.export import export_model

    report = export_model(Path(args.model), quantize=args.quantize, data=args.data)
    print(json.dumps({name: {"bytes": info["bytes"], "quantization": info["quantization"], **info["parity"]}
                      for name, info in report["files"].items()}, indent=2))
    return 0


def run_push(args: argparse.Namespace) -> int:
    from fmhub.hub import push_model

    url = push_model(Path(args.model), args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed to {url}")
    return 0


def run_spaces(args: argparse.Namespace) -> int:
    from fmhub.spaces import parse_model_flags

    models = parse_model_flags(args.scenario, args.model)
    if args.static:
        return run_static_spaces(args, models)
    from fmhub.spaces import deploy_space, write_space_folder

    if args.spaces_command == "deploy":
        print(f"deployed to {deploy_space(args.scenario, args.space_id, models, private=args.private)}")
    else:
        folder = write_space_folder(args.scenario, Path(args.output_dir), models, overwrite=args.overwrite)
        print(f"Space folder written to {folder}")
    return 0


def run_static_spaces(args: argparse.Namespace, models: dict[str, str | None]) -> int:
    """`fmhub spaces build|deploy --static`: the static Space builder of `fmhub.static_space`."""
    from fmhub.static_space import build_static_space, deploy_static_space

    if args.spaces_command == "deploy":
        print(f"deployed to {deploy_static_space(args.scenario, args.space_id, models, private=args.private)}")
    else:
        folder = build_static_space(args.scenario, Path(args.output_dir), models, overwrite=args.overwrite)
        print(f"static Space folder written to {folder}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from fmhub.ui.app import launch_from_args

    launch_from_args(args)
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "export": run_export,
    "push": run_push,
    "spaces": run_spaces,
    "serve": run_serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FmhubError as err:
        print(f"fmhub {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a permission problem outside the writes that already say what they were
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"fmhub {args.command}: error: {describe_write_error(err, 'a file')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fmhub {args.command}: interrupted", file=sys.stderr)
        return 130
