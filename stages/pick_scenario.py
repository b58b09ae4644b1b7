"""pick_scenario stage: the answered pool that dedup/judge/score/select read, from the branch `scenario` names.

Reads:  params.yaml `autoif.scenario` (evol | autoif), `autoif.on_empty` (evol | fail), `data.chunk_rows`;
        data/responses/ (--evol) and data/autoif/responses/ (--autoif)
Writes: data/pool/items.parquet (the chosen table, unchanged: streamed data.chunk_rows rows at a time),
        meta.json (scenario, source, fallback; the settings: scenario, on_empty and the chosen branch's);
        metrics/pool.json (scenario, source, fallback, items, AutoIF items, items per method)
With scenario autoif and no AutoIF item left, `on_empty: evol` takes the evol pool and says so (fallback in
the metrics and meta, a warning on stderr); `on_empty: fail` stops with that message.
"""

from evolforge.core.stage import arguments, run_stage, write
from evolforge.config.data import DataSettings
from evolforge.config.loader import load_section, read_params
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.pool.step import run


def main() -> None:
    args = arguments(__doc__, reads=["--evol", "--autoif"], writes=["--out", "--metrics"])
    params = read_params(args.params)
    write(args, run(args.evol, args.autoif, args.out, load_section(params, "autoif", AutoIFSettings),
                    load_section(params, "data", DataSettings)))


if __name__ == "__main__":
    run_stage(main)
