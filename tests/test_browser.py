"""The rollout browser: filtering and HTML rendering as pure functions, and the widget wired to them."""

from __future__ import annotations

import base64
import html
import io
import re

import pytest
from PIL import Image

from ocean_lib.analysis import load_rollouts
from ocean_lib.browser import (
    IMAGE_MAX_SIDE,
    RolloutBrowser,
    filter_rollouts,
    highlight_reflections,
    image_html,
    render_rollout_html,
)
from ocean_lib.run_dir import RunDir

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


def test_image_html(image_path, tmp_path):
    tag = image_html("images/scene.png", image_root=tmp_path)
    data = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1))
    assert Image.open(io.BytesIO(data)).size == (112, 112)
    big = tmp_path / "big.png"
    Image.new("RGB", (1000, 500)).save(big)
    data = base64.b64decode(re.search(r"base64,([^\"]+)", image_html(str(big))).group(1))
    assert Image.open(io.BytesIO(data)).size == (IMAGE_MAX_SIDE, IMAGE_MAX_SIDE // 2)
    assert "text-only prompt" in image_html(None) and "text-only prompt" in image_html(float("nan"))
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
