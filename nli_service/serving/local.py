"""The engine in this process, without a server: ``nli-service predict`` / ``zero-shot`` / ``verify`` without ``--url``.

``python -m nli_service.serving.local predict PREMISE HYPOTHESIS`` or
``python -m nli_service.serving.local zero-shot TEXT LABEL [LABEL ...] --template T [--multi-label]`` or
``python -m nli_service.serving.local verify DOCUMENT_FILE CLAIM [CLAIM ...]`` prints the result as
JSON. The CLI runs this in a child process, so that the CLI itself never imports torch. Exit 4 with
one line when the model or the settings are unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from nli_service.config import ConfigError, Settings
from nli_service.inference import documents
from nli_service.inference.loader import ModelLoadError
from nli_service.inference.types import Pair
from nli_service.inference.zero_shot import classify
from nli_service.serving.runtime import EngineSpec

LOCAL_ERROR = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nli_service.serving.local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict")
    predict.add_argument("premise")
    predict.add_argument("hypothesis")
    zero_shot = commands.add_parser("zero-shot")
    zero_shot.add_argument("text")
    zero_shot.add_argument("labels", nargs="+")
    zero_shot.add_argument("--template", required=True)
    zero_shot.add_argument("--multi-label", action="store_true")
    verify = commands.add_parser("verify")
    verify.add_argument("document_file")
    verify.add_argument("claims", nargs="+")
    args = parser.parse_args(argv)
    try:
        from nli_service.inference.engine import NLIEngine

        settings = Settings.from_env()
        engine = NLIEngine.from_pretrained(**asdict(EngineSpec.from_settings(settings)))
    except (ConfigError, ModelLoadError) as error:
        print(f"nli-service: {error}", file=sys.stderr)
        return LOCAL_ERROR
    if args.command == "predict":
        result = asdict(engine.predict([Pair(args.premise, args.hypothesis)])[0])
    elif args.command == "verify":
        document = Path(args.document_file).read_text(encoding="utf-8")
        windowing = documents.Windowing(engine.tokenizer, engine.max_length, settings.verify_window_sentences)
        windows = windowing.windows(document, args.claims)
        result = [asdict(verdict) for verdict in documents.verify(engine, windowing, windows, args.claims)]
    else:
        result = asdict(classify(engine, [args.text], args.labels, args.template, args.multi_label)[0])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
