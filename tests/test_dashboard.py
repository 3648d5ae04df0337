"""The dashboard: its page rendered by solara, `econspin viz` errors, and the page in a real headless Chromium."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import econspin
from econspin.cli import app

pytest.importorskip("solara", reason="the dashboard needs the viz extra: pip install 'econspin[viz]'")
import ipyvuetify as vuetify  # noqa: E402
import ipywidgets  # noqa: E402
import solara  # noqa: E402

from econspin import Scenario  # noqa: E402
from econspin.mesa import EconSpinModel  # noqa: E402
from econspin.mesa.dashboard import dashboard, metrics_figure, model_parameters, network_figure, wealth_figure  # noqa: E402
from econspin.mesa.serve import OFFLINE_ENVIRONMENT, UNREACHABLE_CDN  # noqa: E402

ROOT = Path(econspin.__file__).resolve().parent.parent
DEMO = ROOT / "scenarios" / "human_vs_ai.yaml"
runner = CliRunner()
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def tiny(**market):
    return Scenario.from_dict(
        {
            "name": "tiny",
            "populations": {
                "human": {"count": 12, "temperature": 1.0, "spend": 0.2},
                "ai": {"count": 4, "temperature": 0.1, "spend": 0.3},
                "shops": {"count": 3, "temperature": {"schedule": [[0, 0.5], [5, 0.2]]}, "buys": False},
            },
            "market": {"d": 4, **market},
            "run": {"seed": 3, "device": "cpu"},
        }
    )


@solara.component
def Framed(scenario, model):
    """The page inside an AppLayout, which is what shows SolaraViz's sidebar (controls, parameters)."""
    with solara.AppLayout():
        dashboard(scenario, model)


def test_parameters_are_a_slider_per_population_setting_and_a_seed_field():
    parameters = model_parameters(tiny())
    assert parameters["scenario"].name == "tiny"
    assert parameters["seed"] == {"type": "InputText", "value": "3", "label": "seed"}
    sliders = {name: spec for name, spec in parameters.items() if isinstance(spec, dict) and name != "seed"}
    # shops' temperature is a schedule and shops do not buy: no slider for either
    assert sorted(sliders) == ["ai_spend", "ai_temperature", "human_spend", "human_temperature"]
    assert sliders["ai_temperature"]["value"] == 0.1 and sliders["human_spend"]["value"] == 0.2
    # under the unit rule the share is not spent; an infinite temperature has no slider range
    unit = model_parameters(tiny(spend_rule="unit").with_overrides({"populations.ai.temperature": float("inf")}))
    assert [name for name in unit if name.endswith(("_spend", "_temperature"))] == ["human_temperature"]
    # what SolaraViz does on reset: the class called with every parameter's value
    values = {name: spec["value"] if isinstance(spec, dict) else spec for name, spec in parameters.items()}
    model = EconSpinModel(**{**values, "ai_temperature": 0.4, "seed": "11"})
    assert model.scenario.run.seed == 11
    assert float(model.rollout.state.temperature[0, 12]) == pytest.approx(0.4)


def test_figures_before_and_after_the_first_round():
    model = EconSpinModel(tiny(mode="sampled", heads=2), seed=1)
    assert "no trade yet" in network_figure(model).axes[0].texts[0].get_text()
    model.step()
    for build in (metrics_figure, wealth_figure, network_figure):
        figure = build(model)
        assert figure.axes and any(
            "round 1" in axis.get_title() or "round 1" in (figure._suptitle.get_text() if figure._suptitle else "")
            for axis in figure.axes
        )
    network_axis = network_figure(model, top_k=5).axes[0]
    assert "the 5 largest flows" in network_axis.get_title()


def test_the_page_renders_steps_and_resets_with_the_sidebars_values():
    scenario = tiny()
    model = solara.reactive(EconSpinModel(scenario, seed=3))
    _, rc = solara.render(Framed(scenario, model), handle_error=False)
    assert [w.label for w in rc.find(vuetify.Slider).widgets][2:] == [
        "human temperature",
        "human spend",
        "ai temperature",
        "ai spend",
    ]
    images = rc.find(ipywidgets.Image).widgets
    assert len(images) == 3  # metrics, wealth, trade network
    before = [bytes(image.value) for image in images]
    rc.find(vuetify.Btn, children=["Step"]).widget.click()
    assert model.value.steps == 1
    rc.find(vuetify.Html, children=["Step: 1"]).assert_single()
    after = [bytes(image.value) for image in rc.find(ipywidgets.Image).widgets]
    assert all(old != new for old, new in zip(before, after))  # every plot was redrawn

    [slider] = [w for w in rc.find(vuetify.Slider).widgets if w.label == "ai temperature"]
    slider.v_model = 0.5
    seed = rc.find(vuetify.TextField, label="seed").widget
    seed.v_model = "7"  # a seed typed into the page is text
    seed.fire_event("focusout", {})
    rc.find(vuetify.Btn, children=["Reset"]).widget.click()
    rc.find(vuetify.Html, children=["Step: 0"]).assert_single()
    assert model.value.steps == 0 and model.value.scenario.run.seed == 7
    assert float(model.value.rollout.state.temperature[0, 12]) == pytest.approx(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_viz_refuses_bad_input_in_one_line(tmp_path):
    cases = [
        (["viz", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["viz", str(DEMO), "--port", "70000"], "--port 70000: a port is a number from 1 to 65535"),
        (["viz", str(DEMO), "--port", "0"], "--port 0: a port is a number from 1 to 65535"),
        (["viz", str(DEMO), "--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cases.append((["viz", str(DEMO), "--port", str(busy.getsockname()[1])], "already in use"))
        for arguments, expected in cases:
            result = runner.invoke(app, arguments)
            assert result.exit_code == 2, (arguments, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.output
            assert "Traceback" not in result.output


def find_chromium() -> str | None:
    """A Chromium that Playwright can drive: $ECONSPIN_CHROMIUM, Debian's packages, or one on PATH."""
    candidates = [
        os.environ.get("ECONSPIN_CHROMIUM"),
        "/usr/lib/chromium/chromium-headless-shell",  # Debian's chromium-headless-shell (its /usr/bin one is a wrapper)
        "/usr/lib/chromium/chromium",  # Debian's chromium
        *(shutil.which(name) for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")),
    ]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


@pytest.fixture
def chromium():
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install 'econspin[test]'")
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium to drive: apt-get install chromium-headless-shell (bash .ci/install-browser does it)")
    return path


@pytest.fixture
def served(tmp_path):
    """`econspin viz scenarios/human_vs_ai.yaml` on a free port; yields its URL."""
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in OFFLINE_ENVIRONMENT:  # the offline settings under test, not whatever this shell has
        environment.pop(name, None)
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "econspin.cli", "viz", str(DEMO), "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"econspin viz exited with {server.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("econspin viz did not answer within 90 s")
            time.sleep(0.3)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def plot_sources(page) -> list[str]:
    return page.eval_on_selector_all("img", "images => images.map(image => image.src)")


def test_the_page_steps_in_a_headless_chromium(chromium, served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    requests, failures, sockets = [], [], []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",  # an empty profile
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("response", lambda response: response.status >= 400 and failures.append(response.url))
            page.on("websocket", lambda socket_: sockets.append(socket_.url))
            page.goto(served, timeout=60_000)
            step_counter = page.get_by_text("Step: 0")
            expect(step_counter).to_be_visible(timeout=60_000)
            expect(page.locator("img")).to_have_count(3, timeout=30_000)  # metrics, wealth, trade network
            expect(page.get_by_text("human temperature")).to_be_visible()
            expect(page.get_by_text("ai spend")).to_be_visible()
            before = plot_sources(page)

            page.get_by_role("button", name="Step").click()
            expect(page.get_by_text("Step: 1")).to_be_visible(timeout=30_000)
            deadline = time.monotonic() + 30
            while any(old == new for old, new in zip(before, plot_sources(page))) and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            after = plot_sources(page)
            assert len(after) == 3 and all(old != new for old, new in zip(before, after)), (before, after)
            page.screenshot(path=tmp_path / "dashboard.png")
            keep = os.environ.get("ECONSPIN_DASHBOARD_SCREENSHOT")
            if keep:  # for the README: play a while, then pause and keep the picture
                page.get_by_role("button", name="▶").click()
                expect(page.get_by_text("Step: 4", exact=False).first).to_be_visible(timeout=60_000)
                page.wait_for_timeout(15_000)
                page.get_by_role("button", name="❚❚").click()
                page.wait_for_timeout(3_000)
                page.screenshot(path=keep)
        finally:
            context.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    # offline: every request went to this server (or stayed inside the page), and none failed
    local = served.rstrip("/")
    outside = [url for url in requests if not url.startswith((local, "blob:", "data:"))]
    assert not outside, outside
    assert sockets and all(url.startswith(local.replace("http", "ws")) for url in sockets), sockets
    assert not failures, failures


def test_offline_settings_point_nowhere_outside():
    assert OFFLINE_ENVIRONMENT["SOLARA_ASSETS_PROXY"] == "true"
    assert OFFLINE_ENVIRONMENT["SOLARA_ASSETS_CDN"] == UNREACHABLE_CDN and "127.0.0.1" in UNREACHABLE_CDN
    assert OFFLINE_ENVIRONMENT["SOLARA_TELEMETRY_MIXPANEL_ENABLE"] == "false"
