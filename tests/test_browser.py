"""The rollout browser: filtering and HTML rendering as pure functions, and the widget wired to them."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import pytest
from PIL import Image

from ocean_lib.base.run_dir import RunDir
from ocean_lib.study.analysis import load_rollouts
from ocean_lib.study.browser import (
    ANSWER_COLOUR,
    IMAGE_MAX_SIDE,
    TRUTH_COLOUR,
    RolloutBrowser,
    filter_rollouts,
    grounding_boxes,
    highlight_reflections,
    image_html,
    render_rollout_html,
    sample_rollouts,
)

SCRIPT = "<script>alert('x')</script>"


def rollout(step, source, completion, *, overall=1.1, length=10, image=None, **extra):
    reward = {
        "overall": overall,
        "accuracy": 1.0,
        "format": 1.0,
        "answer_extracted": "3",
        "answer_source": "answer_tag",
        "think_answer_disagree": False,
    }
    return {
        "step": step,
        "prompt_id": f"{source}:{step}",
        "data_source": source,
        "reward_func": "acc",
        "image": image,
        "prompt": f"question of {source} at step {step}",
        "ground_truth": "3",
        "completion": completion,
        "reward": reward,
        "advantage": 0.25,
        "length": length,
        "finished": True,
        **extra,
    }


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "images" / "scene.png"
    path.parent.mkdir()
    Image.new("RGB", (112, 112), (200, 10, 10)).save(path)
    return path


@pytest.fixture
def rollouts(tmp_path, image_path):
    run = RunDir(tmp_path / "run")
    run.log_rollouts(
        [
            rollout(
                1,
                "geometry",
                "<think>40 + 100</think><answer>140</answer>",
                overall=1.1,
                length=12,
                image="images/scene.png",
            ),
            rollout(
                1,
                "counting",
                "<think>Wait, one more. Let me re-check.</think><answer>4</answer>",
                overall=0.1,
                length=30,
            ),
            rollout(2, "counting", "<think>3</think><answer>3</answer>", overall=1.1, length=8),
            rollout(
                3,
                "geometry",
                "<think>However, this is an error.</think><answer>2</answer>",
                overall=0.0,
                length=50,
            ),
        ]
    )
    return load_rollouts(run)


def test_filter_rollouts(rollouts):
    def kept(**filters):
        return filter_rollouts(rollouts, **filters).index.tolist()

    assert kept() == [0, 1, 2, 3]
    assert kept(steps=(1, 2)) == [0, 1, 2]
    assert kept(steps=(3, 3)) == [3]
    assert kept(data_source="counting") == [1, 2]
    assert kept(reward=(1.0, 1.1)) == [0, 2]  # inclusive bounds
    assert kept(length=(10, 30)) == [0, 1]
    assert kept(reflective_only=True) == [1, 3]
    assert kept(data_source="geometry", reflective_only=True, steps=(1, 2)) == []


def test_highlight_marks_phrases_and_escapes_everything():
    out = highlight_reflections(f"{SCRIPT} Wait, 3 < 4 & 5. <b>Let me verify</b>")
    assert "<script" not in out and "<b>" not in out
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in out and "3 &lt; 4 &amp; 5" in out
    marks = re.findall(r'<mark class="reflection" title="([^"]+)"[^>]*>(.*?)</mark>', out)
    assert marks == [("wait", "Wait"), ("let me verify", "Let me verify")]
    # our markup removed and the entities decoded, the input comes back whole
    assert html.unescape(re.sub(r"<[^>]+>", "", out)) == f"{SCRIPT} Wait, 3 < 4 & 5. <b>Let me verify</b>"


def test_highlight_keeps_the_outer_of_overlapping_matches_and_caps_length():
    out = highlight_reflections("However, I made a mistake.")
    assert out.count("<mark") == 1 and 'title="however ... error"' in out
    long = highlight_reflections("x" * 25_000)
    assert "5000 more characters not shown" in long


def test_image_html(image_path, tmp_path, monkeypatch):
    tag = image_html("images/scene.png", image_root=tmp_path)
    data = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1))
    assert Image.open(io.BytesIO(data)).size == (112, 112)
    big = tmp_path / "big.png"
    Image.new("RGB", (1000, 500)).save(big)
    data = base64.b64decode(re.search(r"base64,([^\"]+)", image_html(str(big))).group(1))
    assert Image.open(io.BytesIO(data)).size == (IMAGE_MAX_SIDE, IMAGE_MAX_SIDE // 2)
    assert "text-only prompt" in image_html(None) and "text-only prompt" in image_html(float("nan"))
    # A record's relative path (Ocean-R1's image_paths), which the trainer opened from its working directory:
    # before, it was looked for under the run directory only ("image not found").
    (tmp_path / "data").mkdir()
    shutil.copy(image_path, tmp_path / "data" / "scene.png")
    monkeypatch.chdir(tmp_path)
    assert "base64," in image_html("data/scene.png", image_root=tmp_path / "runs" / "run")
    missing = image_html(f"{SCRIPT}.png", image_root=tmp_path)
    assert "image not found" in missing and "<script" not in missing
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    assert "image not readable" in image_html(str(corrupt))


def test_render_rollout_html_shows_every_part(rollouts, tmp_path):
    page = render_rollout_html(rollouts.loc[1].to_dict(), image_root=tmp_path)
    assert "question of counting at step 1" in page
    assert re.search(r"<b>think</b>.*Wait.*re-check", page, re.S)
    assert re.search(r"<b>answer</b></div><div[^>]*>4</div>", page)
    assert "outside the tags" not in page  # nothing outside the tags in this completion
    assert "<td>accuracy</td><td>1.000</td>" in page and "<td>answer_source</td><td>answer_tag</td>" in page
    assert "<td><b>advantage</b></td><td>0.250</td>" in page
    assert "text-only prompt" in page
    with_image = render_rollout_html(rollouts.loc[0].to_dict(), image_root=tmp_path)
    assert "data:image/png;base64," in with_image


def test_render_rollout_html_escapes_untrusted_text_in_every_field():
    row = rollout(
        1,
        SCRIPT,
        f"{SCRIPT}<think>{SCRIPT} wait</think><answer>{SCRIPT}</answer>{SCRIPT}",
        image=f"{SCRIPT}.png",
        prompt_id=SCRIPT,
    )
    row["prompt"] = row["ground_truth"] = row["reward_func"] = SCRIPT
    row["reward"]["answer_extracted"] = SCRIPT
    flat = {k: v for k, v in row.items() if k != "reward"} | {
        f"reward/{k}": v for k, v in row["reward"].items()
    }
    page = render_rollout_html(flat)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 9
    assert "outside the tags" in page  # the text before and after the tags is shown, escaped


def test_browser_widget_filters_and_pages(rollouts, tmp_path):
    browser = RolloutBrowser(rollouts, image_root=tmp_path)
    assert browser.position.value == "1 of 4" and "question of geometry at step 1" in browser.html.value
    assert browser.previous.disabled and not browser.next.disabled
    browser.next.click()
    assert browser.position.value == "2 of 4" and "question of counting at step 1" in browser.html.value

    browser.task.value = "geometry"
    assert browser.position.value == "1 of 2" and "question of geometry at step 1" in browser.html.value
    browser.next.click()
    assert "question of geometry at step 3" in browser.html.value and browser.next.disabled
    browser.next.click()  # past the end: stays on the last
    assert browser.position.value == "2 of 2"

    browser.steps.value = (1, 2)
    assert browser.position.value == "1 of 1"
    browser.reflective.value = True
    assert browser.position.value == "0 of 0" and "no rollout matches" in browser.html.value

    browser.task.value = "all"
    assert "question of counting at step 1" in browser.html.value and "<mark" in browser.html.value
    browser.reflective.value = False
    browser.reward.value = (1.0, 1.1)
    browser.length.value = (8, 8)
    assert browser.position.value == "1 of 1" and "question of counting at step 2" in browser.html.value


def test_browser_needs_rollouts(tmp_path):
    (tmp_path / "rollouts.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rollouts to browse"):
        RolloutBrowser(load_rollouts(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Grounding boxes, several runs, the static view
# ---------------------------------------------------------------------------------------------------------------

GREY = (123, 117, 104)


def decoded(tag: str) -> Image.Image:
    data = base64.b64decode(re.search(r"base64,([^\"]+)", tag).group(1))
    return Image.open(io.BytesIO(data)).convert("RGB")


def grounding(step, truth, answer, overall, image="images/scene.png"):
    row = rollout(
        step, "grounding", f"<think>the box</think><answer>{answer}</answer>", overall=overall, image=image
    )
    row.update(reward_func="iou", ground_truth=json.dumps(truth))
    row["reward"]["answer_extracted"] = answer
    return row


def test_grounding_answers_show_the_true_and_the_answered_box(tmp_path):
    path = tmp_path / "scene.png"
    Image.new("RGB", (112, 112), GREY).save(path)
    row = grounding(1, [10, 20, 50, 60], '{"bbox_2d": [60, 60, 100, 100]}', 1.0)
    flat = {k: v for k, v in row.items() if k != "reward"} | {
        f"reward/{k}": v for k, v in row["reward"].items()
    }
    truth, answer = grounding_boxes(flat)
    assert (truth, answer) == ([10, 20, 50, 60], [60, 60, 100, 100])
    shown = decoded(image_html(str(path), truth=truth, answer=answer))
    zoom = shown.width / 112
    at = lambda x, y: shown.getpixel((round(x * zoom), round(y * zoom)))  # noqa: E731
    assert at(10, 40) == TRUTH_COLOUR and at(30, 20) == TRUTH_COLOUR  # left and top edges of the truth
    assert at(60, 80) == ANSWER_COLOUR and at(80, 100) == ANSWER_COLOUR
    assert at(30, 40) == GREY and at(80, 80) == GREY  # insides untouched
    assert "ground truth" in image_html(str(path), truth=truth, answer=answer)  # a legend

    # The model saw the picture at 56 px (max_pixels): boxes in its pixels land at twice the coordinates.
    shown = decoded(image_html(str(path), truth=[5, 10, 25, 30], pixels=(16, 56 * 56)))
    zoom = shown.width / 112
    assert shown.getpixel((round(10 * zoom), round(40 * zoom))) == TRUTH_COLOUR
    # A thumbnail the trainer saved reduced cannot be mapped back: no box, and it says so.
    (tmp_path / "images").mkdir()
    Image.new("RGB", (256, 256), GREY).save(tmp_path / "images" / "big.png")
    tag = image_html("images/big.png", tmp_path, truth=[1, 1, 9, 9])
    assert "boxes not drawn" in tag and decoded(tag).getcolors() == [(256 * 256, GREY)]
    assert grounding_boxes({"reward_func": "acc", "ground_truth": "[1, 2, 3, 4]"}) == (None, None)


def write_run(directory, rows):
    run = RunDir(directory)
    run.log_rollouts(rows)
    return directory


def test_the_browser_switches_between_runs(tmp_path, image_path):
    a = write_run(tmp_path / "a", [rollout(s, "counting", "<answer>3</answer>") for s in (1, 2, 3)])
    b = write_run(tmp_path / "b", [rollout(s, "geometry", "<answer>1</answer>", length=40) for s in (7, 8)])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "rollouts.jsonl").write_text("")
    browser = RolloutBrowser({"stage A": a, "stage B": b, "nothing yet": empty})
    assert list(browser.run.options) == ["stage A", "stage B"]  # a run without rollouts is left out
    assert browser.steps.value == (1, 3) and browser.position.value == "1 of 3"
    browser.run.value = "stage B"
    assert browser.steps.value == (7, 8) and browser.length.value == (40, 40)
    assert browser.position.value == "1 of 2" and "question of geometry at step 7" in browser.html.value
    assert list(browser.task.options) == ["all", "geometry"]


def test_a_page_without_a_kernel_gets_a_table_of_sample_rollouts(tmp_path, image_path):
    rows = [grounding(1, [10, 10, 40, 40], "[10, 10, 40, 40]", 1.0, image=str(image_path))]
    rows += [
        grounding(2, [10, 10, 40, 40], f"[{x}, 10, {x + 30}, 40]", r, image=str(image_path))
        for x, r in ((10, 1.1), (60, 0.1), (30, 0.6))
    ]
    rows += [rollout(2, "counting", f"<answer>{n}</answer>", overall=n / 10) for n in range(5)]
    run = write_run(tmp_path / "run", rows)
    browser = RolloutBrowser({"GRPO-vis": run})
    bundle = browser._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab shows the widget
    assert bundle["text/plain"] == "RolloutBrowser(GRPO-vis)"  # never the widget tree's repr
    page = bundle["text/html"]
    assert "<table class='ocean-rollouts'" in page and "GRPO-vis: sample rollouts of step 2" in page
    # the last step's best and worst of each task, in task order
    sample = sample_rollouts(load_rollouts(run))
    assert [(r["data_source"], r["reward/overall"]) for _, r in sample.iterrows()] == [
        ("counting", 0.4),
        ("counting", 0.0),
        ("grounding", 1.1),
        ("grounding", 0.1),
    ]
    assert page.count("<tr><td") == 4 and page.count("data:image/png;base64,") == 2
    assert page.count("ground truth </span>") == 0 and page.count("&#9632;</span> ground truth") == 2
