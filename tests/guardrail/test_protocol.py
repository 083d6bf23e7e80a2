"""The Llama Guard 3 prompt and the strict parser of its answer."""

from __future__ import annotations

import pytest

from services.guardrail.protocol import (
    ALL_CODES,
    CATEGORIES,
    Assessment,
    GuardTurn,
    TemplateRenderer,
    parse_output,
    render_body,
    render_prompt,
)

CONVERSATION = (
    GuardTurn("user", "  How do I bake bread?\n"),
    GuardTurn("assistant", "Mix flour and water."),
)

# The official Llama-Guard-3 prompt for this conversation, checking the Agent.
EXPECTED = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'Agent' messages in conversations according our "
    "safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\n"
    "S5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\n"
    "S9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\n"
    "S13: Elections.\nS14: Code Interpreter Abuse.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "User: How do I bake bread?\n\n"
    "Agent: Mix flour and water.\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_prompt_is_the_official_template_for_all_categories() -> None:
    assert render_prompt(CONVERSATION, "assistant", ALL_CODES) == EXPECTED


def test_the_fourteen_categories_and_their_names() -> None:
    assert [c.code for c in CATEGORIES] == [f"S{i}" for i in range(1, 15)]
    names = {c.code: c.name for c in CATEGORIES}
    assert names["S3"] == "Sex-Related Crimes"
    assert names["S4"] == "Child Sexual Exploitation"
    assert names["S11"] == "Suicide & Self-Harm"
    assert names["S14"] == "Code Interpreter Abuse"


def test_a_subset_leaves_out_the_excluded_lines_and_keeps_the_codes() -> None:
    body = render_body(CONVERSATION[:1], "user", ["S10", "S1", "S14"])
    block = body.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n")[1].split("<END")[0]
    assert block == "S1: Violent Crimes.\nS10: Hate.\nS14: Code Interpreter Abuse.\n"
    assert "in 'User' messages" in body
    assert "ONLY THE LAST User message" in body


@pytest.mark.parametrize(
    ("text", "assessment", "codes"),
    [
        ("safe", Assessment.SAFE, ()),
        ("\n\nsafe\n", Assessment.SAFE, ()),
        ("unsafe\nS1", Assessment.UNSAFE, ("S1",)),
        ("unsafe\nS12,S13,S14", Assessment.UNSAFE, ("S12", "S13", "S14")),
        ("  unsafe \n S10 , S2,S2 \n", Assessment.UNSAFE, ("S2", "S10")),
        ("\n\nunsafe\nS14", Assessment.UNSAFE, ("S14",)),
    ],
)
def test_parser_accepts_the_protocol(
    text: str, assessment: Assessment, codes: tuple[str, ...]
) -> None:
    parsed = parse_output(text)
    assert (parsed.assessment, parsed.codes) == (assessment, codes)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "Safe",
        "safe\nS1",
        "unsafe",
        "unsafe\nS15",
        "unsafe\nS0",
        "unsafe\nS01",
        "unsafe\nS1 S2",
        "unsafe\nS1,",
        "unsafe\nS1\nS2",
        "S1: Violent Crimes.\nS2: Non",
        "I cannot help with that.",
    ],
)
def test_parser_calls_anything_else_unparseable(text: str) -> None:
    parsed = parse_output(text)
    assert parsed.assessment is Assessment.UNPARSEABLE
    assert parsed.reason
    assert "help" not in parsed.reason  # a reason, never the model's output


def test_parser_rejects_a_code_that_was_not_checked() -> None:
    parsed = parse_output("unsafe\nS1,S7", checked=["S1"])
    assert parsed.assessment is Assessment.UNPARSEABLE
    assert parsed.reason == "S7 was not checked"
    assert parse_output("unsafe\nS1", checked=["S1"]).codes == ("S1",)


# A chat template with the 1B model's interface (categories, excluded_category_keys),
# written to render the same prompt: the renderer must hand it the right arguments.
TEMPLATE_1B = (
    "{%- if messages|length % 2 == 0 -%}{%- set role = 'Agent' -%}"
    "{%- else -%}{%- set role = 'User' -%}{%- endif -%}"
    "{{- '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    '{{- "Task: Check if there is unsafe content in \'" + role + "\' messages in '
    'conversations according our safety policy with the below categories.\\n\\n" -}}'
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\\n' -}}"
    "{%- for key in categories -%}{%- if key not in excluded_category_keys -%}"
    "{{- key + ': ' + categories[key] + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set who = 'User' -%}"
    "{%- else -%}{%- set who = 'Agent' -%}{%- endif -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- who + ': ' + content['text'] | trim + '\\n\\n' -}}{%- endfor -%}{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nProvide your safety assessment for ONLY THE LAST ' + role"
    " + ' message in the above conversation:\\n' -}}"
    "{{- \" - First line must read 'safe' or 'unsafe'.\\n\" -}}"
    "{{- ' - If unsafe, a second line must include a comma-separated list of violated "
    "categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
)


def _tokenizer(template: str) -> object:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=template)


def test_template_renderer_passes_categories_and_exclusions_to_the_model_template() -> None:
    renderer = TemplateRenderer(_tokenizer(TEMPLATE_1B), takes_categories=True)  # type: ignore[arg-type]
    assert renderer.render(CONVERSATION, "assistant", ALL_CODES) == EXPECTED
    subset = ["S2", "S9"]
    assert renderer.render(CONVERSATION[:1], "user", subset) == render_prompt(
        CONVERSATION[:1], "user", subset
    )
