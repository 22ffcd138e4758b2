"""llava_plugin.chat: one description of each chat format (llava_plugin/templates.yaml). Its Jinja
chat template (saved with exported processors, used by eval) renders exactly the text mllm_train's
training renderer produces, for every format of the file."""
import pytest

from eval import mllm
from llava_plugin.chat import IMAGE_PLACEHOLDER, chat_template, jinja_chat_template, render_chat
from mllm_train.conversation import GPT, HUMAN, BadSample, ChatTemplate, Turn, load_templates

ROLES = {HUMAN: "user", GPT: "assistant"}
CONVERSATIONS = {
    "image after the question": ("What color is the star?\n<image>", "The star is red.", "How many?",
                                 "2 stars.", "  And the square?\n", "Blue."),
    "image first": ("<image>\nDescribe it.", "A red star.", "Is it big?", "No."),
    "image only": ("<image>", "A star.", "More?", "Two squares."),
    "text only": ("Name a shape.", "A circle.", "Another?", "A square."),
}


def turns_of(texts):
    return [Turn(HUMAN if i % 2 == 0 else GPT, text) for i, text in enumerate(texts)]


def messages_of(turns, parts: bool):
    """Chat messages: string content (with the tag where the sample has it), or HF content parts
    (an image part, then the words)."""
    if not parts:
        return [{"role": ROLES[t.role], "content": t.text} for t in turns]
    messages = []
    for turn in turns:
        content = [{"type": "image"}] if IMAGE_PLACEHOLDER in turn.text else []
        words = turn.text.replace(IMAGE_PLACEHOLDER, "")
        messages.append({"role": ROLES[turn.role], "content": content + [{"type": "text", "text": words}]})
    return messages


def assert_renders_like_training(template: ChatTemplate, turns):
    jinja = jinja_chat_template(template)
    for parts in (False, True):
        assert render_chat(jinja, messages_of(turns, parts)) == template.render(turns).text
        # the prompt the model answers: everything but the last answer, ending with assistant_prompt
        open_prompt = template.render(turns[:-1], add_generation_prompt=True).text
        assert render_chat(jinja, messages_of(turns[:-1], parts), add_generation_prompt=True) == open_prompt


@pytest.mark.parametrize("name", sorted(load_templates()))
def test_every_format_renders_its_training_text_as_a_chat_template(name):
    template = load_templates()[name]
    if template.no_chat_template:  # plain: the data says why, and asking for one says so
        with pytest.raises(ValueError, match=f"chat format '{name}' has no chat template: .*question"):
            jinja_chat_template(template)
        return
    checked = 0
    for texts in CONVERSATIONS.values():
        turns = turns_of(texts)
        try:
            template.render(turns)
        except BadSample:  # the format rejects this conversation: so must its chat template
            with pytest.raises(Exception):
                render_chat(jinja_chat_template(template), messages_of(turns, parts=False))
            continue
        assert_renders_like_training(template, turns)
        checked += len(turns) > 2 and IMAGE_PLACEHOLDER in texts[0] + texts[2]
    assert checked >= 2, "a multi-turn conversation with an image must be compared"


def test_every_format_says_whether_it_has_a_chat_template():
    formats = load_templates()
    assert {name for name, f in formats.items() if f.no_chat_template} == {"plain"}
    assert chat_template("vicuna_v1") == jinja_chat_template(formats["vicuna_v1"])
    with pytest.raises(ValueError, match=r"unknown chat template 'llava_v0'; known templates: \['plain', "):
        chat_template("llava_v0")


def test_round_cap_and_required_image_are_enforced_by_the_chat_template():
    """Fields only plain uses today, on a format that has a chat template: `max_rounds`, `requires_image`."""
    captions = ChatTemplate(name="captions", description="", system="", human="{image}{text}\n",
                            image="<image>", assistant_prompt="Caption:", assistant=" {text}\n", max_rounds=1,
                            requires_image=True)
    jinja = jinja_chat_template(captions)
    assert_renders_like_training(captions, turns_of(("<image>Short, please.", "a red star")))
    assert_renders_like_training(captions, turns_of(("<image>", "a red star")))
    with pytest.raises(Exception, match="chat format 'captions' allows at most 1 user turns"):
        render_chat(jinja, messages_of(turns_of(CONVERSATIONS["image first"]), parts=False))
    with pytest.raises(Exception, match="chat format 'captions' needs an image"):
        render_chat(jinja, [{"role": "user", "content": "Describe."}], add_generation_prompt=True)


def test_format_fields_take_only_their_placeholders():
    with pytest.raises(ValueError, match=r"field 'human' uses \['question'\]; its placeholders are"):
        ChatTemplate(name="x", description="", system="", human="{image}{question}", image="<image>",
                     assistant_prompt="", assistant="{text}", max_rounds=None, requires_image=False)


def test_exported_checkpoint_and_eval_prompts_use_the_generated_template(zoo):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(zoo.llava)
    assert processor.chat_template == chat_template("vicuna_v1")
    question = "Which way is the arrow pointing?\nA. Up\nB. Down"
    assert mllm.format_prompt(question, processor=processor) == mllm.format_prompt(question)
    assert mllm.format_prompt(question, with_image=False, processor=processor) == mllm.format_prompt(
        question, with_image=False)
    # eval renders through the checkpoint's own template, whatever it is
    processor.chat_template = "{{- 'Q: ' ~ messages[0]['content'][-1]['text'] ~ ' A:' -}}"
    assert mllm.format_prompt(question, processor=processor) == f"Q: {question} A:"
