"""docs/configuration.md is the settings' reference: it must say exactly what `Settings` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compute.settings import PROJECT_ROOT, Settings, environment_variables, markdown_table, shown

DOC = PROJECT_ROOT / "docs" / "configuration.md"


def test_the_configuration_page_lists_every_setting_as_settings_defines_it() -> None:
    text = DOC.read_text()
    assert markdown_table() in text, "stale: run `python -m compute.settings docs/configuration.md`"
    documented = re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE)
    assert documented == list(Settings.model_fields), "every setting, once, in the class's order"


@pytest.mark.parametrize("name", [n for n, f in Settings.model_fields.items() if f.default is not None])
def test_each_documented_variable_sets_its_field(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables in the table are the ones pydantic-settings reads: each one, set to a value,
    shows in the field."""
    field = Settings.model_fields[name]
    value = {bool: "true" if field.default is False else "false", int: "7", float: "0.5"}.get(
        type(field.default), "/elsewhere"
    )
    for variable in environment_variables(name):
        monkeypatch.setenv(variable, value)
        got = getattr(Settings(), name)
        assert shown(got) == value or str(got) == value or got == type(field.default)(value), variable
        monkeypatch.delenv(variable)


def test_ray_address_takes_rays_own_variable_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert Settings().ray_address == "10.0.0.1:6379"
    assert environment_variables("ray_address") == ["STOCKPIPE_RAY_ADDRESS", "RAY_ADDRESS"]
    assert Path(shown(Settings.model_fields["source"].default)) == Path("data/sample")


def changed(name: str) -> str:
    """A value for a setting's variable that is not its default (as the variable's text)."""
    field = Settings.model_fields[name]
    default = field.default
    if isinstance(default, bool):
        return "false" if default else "true"
    if name == "holdout_fraction":
        return "0.3"
    if isinstance(default, int) or name == "train_workers":
        return str((default or 0) + 3)
    if isinstance(default, float):
        return str(default + 1.5) if name != "serve_follow_seconds" else "7.5"
    return f"/elsewhere/{name}"


def test_a_run_takes_every_setting_its_parameters_leave_out_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every variable set, no flag or parameter given: through each CLI command that runs a flow,
    and through each deployment of prefect.yaml (whose own parameters win), the run's settings are
    the environment's. (A flow parameter with a default of its own would hide its variable:
    `--source` once did.)"""
    import inspect

    import yaml

    from compute.layout import Layout
    from flows import cli, commands, pipeline

    for name in Settings.model_fields:
        monkeypatch.setenv(environment_variables(name)[0], changed(name))
    from_environment = Settings()
    assert all(getattr(from_environment, n) != f.default for n, f in Settings.model_fields.items())

    for name, command in cli.COMMANDS.items():
        if command.flow is None:
            continue
        args = cli._parser().parse_args([name])
        layout = Layout(args.out or Settings().out)
        parameters = commands.flow_parameters(command, args, layout)
        assert pipeline.run_settings(parameters) == from_environment, name

    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        flow = getattr(pipeline, deployment["entrypoint"].split(":")[1])
        defaults = {k: p.default for k, p in inspect.signature(flow.fn).parameters.items()}
        given = deployment.get("parameters") or {}
        explicit = {k: v for k, v in given.items() if k in Settings.model_fields and v is not None}
        expected = from_environment.model_copy(update=Settings(**explicit).model_dump(include=set(explicit)))
        assert pipeline.run_settings({**defaults, **given}) == expected, deployment["name"]


def test_each_whole_pipeline_deployment_writes_an_output_of_its_own() -> None:
    """sample and daily once shared `out: output`: each run flipped stages 1 and 2 between the two
    sources, and the daily model was gated against the sample's."""
    import yaml

    deployments = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    whole = [d for d in deployments if d["entrypoint"].endswith(":stock_pipeline")]
    outs = [Settings(out=d["parameters"]["out"]).out for d in whole]
    assert len(whole) >= 2 and len(set(outs)) == len(outs), outs
    sources = {d["parameters"]["out"]: d["parameters"]["source"] for d in whole}
    assert len(set(sources.values())) == len(sources), sources


def test_the_page_names_every_flow_parameter_that_is_a_setting() -> None:
    import inspect

    from flows import pipeline

    flows = (pipeline.stock_pipeline, pipeline.ingest_flow, pipeline.features_flow, pipeline.train_flow)
    parameters = {p for f in flows for p in inspect.signature(f.fn).parameters if p in Settings.model_fields}
    sentence = (
        DOC.read_text().split("its worker's environment, and its")[1].split("comes from the environment")[0]
    )
    assert parameters == set(re.findall(r"`(\w+)`", sentence)) - {"stop_after"}, sentence
