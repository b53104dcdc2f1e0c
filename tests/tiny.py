"""Tiny randomly initialised encoders with tokenizers trained on the fly, as the transformers test
suite does: real architectures and real tokenizer types, small enough to train in seconds offline."""
from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the film was a delight from start to finish",
    "a dull, lifeless script and wooden acting",
    "my card has not arrived yet, what should I do",
    "how do I top up my account with a bank transfer",
    "I love this phone, the battery lasts forever",
    "terrible service, I want a refund now",
    "an ordinary story told with extraordinary care",
    "why was my payment declined at the shop",
] * 4


def _fast(tokenizer_object, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special)


def tiny_roberta(out_dir: Path, vocab_size: int = 400) -> Path:
    """Save a 2-layer random RoBERTa and a byte-level BPE tokenizer in Hugging Face format."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForMaskedLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=special)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = _fast(bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                mask_token="<mask>", cls_token="<s>", sep_token="</s>", model_max_length=64)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, type_vocab_size=1,
    )
    RobertaForMaskedLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_distilbert(out_dir: Path, vocab_size: int = 300) -> Path:
    """Save a 2-layer random DistilBERT and a WordPiece tokenizer in Hugging Face format."""
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import BertProcessing
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.post_processor = BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
    tok = _fast(wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                mask_token="[MASK]", model_max_length=64)
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    DistilBertForMaskedLM(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
