"""The `fer` command: one entry point for every tool, the same as `python -m fer_utils COMMAND`.

    fer book params/default.yaml            execute the chapters and build the book (book.pipeline)
    fer train params/x.yaml                 train a model (engine.train; torchrun works on the module)
    fer predict photo.jpg                   emotions of the faces in photos (app.predict)
    fer video clip.mp4 --out annotated.mp4  emotions over time of the faces in a video (app.video)
    fer demo                                the upload demo as a Voila app (app.demo)
    fer export runs/ferplus --model ferplus a run's best checkpoint as a bundled model (app.export)
    fer publish                             the built book as an offline site (book.publish)
    fer recipe runs/a runs/b --machine M --out book/recipe/x.csv
                                            the recipe ledger: steps, costs, paired gains (analysis.recipe)
    fer synthetic --out DIR                 generate the built-in synthetic dataset (data.synthetic)

`fer COMMAND --help` gives each command's options. Each command's module is
imported only when it runs, so `fer predict` does not load the book tooling.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "book": "fer_utils.book.pipeline",
    "train": "fer_utils.engine.train",
    "predict": "fer_utils.app.predict",
    "video": "fer_utils.app.video",
    "demo": "fer_utils.app.demo",
    "export": "fer_utils.app.export",
    "publish": "fer_utils.book.publish",
    "recipe": "fer_utils.analysis.recipe",
    "synthetic": "fer_utils.data.synthetic",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fer: unknown command '{command}'; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return module.main(rest, prog=f"fer {command}") or 0


if __name__ == "__main__":
    sys.exit(main())
