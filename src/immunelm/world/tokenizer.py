"""A word-level tokenizer trained on the world, saved as an ordinary HF tokenizer with a chat template."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from immunelm.world.spec import World

SPECIAL_TOKENS = ["<pad>", "<unk>", "<end>", "<system>", "<user>", "<assistant>"]

# Renders "<user> question <assistant> answer <end>"; the generation prompt ends right after
# "<assistant>" so the response is tokenised on its own (exact prompt/response boundary).
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "<{{ m['role'] }}> {{ m['content'] }} "
    "{%- if m['role'] == 'assistant' %} <end> {% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<assistant>{% endif -%}"
)


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    digits = [str(d) for d in range(100)]  # every number an answer or prompt may need
    core.train_from_iterator(world.vocabulary_text() + digits, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<end>",
        chat_template=CHAT_TEMPLATE, model_max_length=64,
    )
    tok.padding_side = "left"  # generation pads on the left; training collates itself
    return tok
