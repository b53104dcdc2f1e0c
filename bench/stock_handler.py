"""Benchmark baseline B, not a product handler: what TorchServe's stock Hugging Face example does.

Like examples/Huggingface_Transformers/Transformer_handler_generalized.py: the eager fp32 model loaded
with from_pretrained, every request tokenized on its own and padded to the fixed max_length, one text
per forward (the model is registered with batch_size 1), the predicted label name returned as text.
TorchServe needs exactly one class in a handler module, hence no helpers here.
"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler


class StockTextHandler(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.max_length = int((context.model_yaml_config or {}).get("handler", {}).get("max_length", 128))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
        self.labels = self.model.config.id2label
        self.initialized = True

    def preprocess(self, requests):
        texts = []
        for row in requests:
            text = row.get("data") or row.get("body")
            texts.append(text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else text)
        return self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                              return_tensors="pt")

    def inference(self, inputs):
        with torch.no_grad():
            return self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits

    def postprocess(self, logits):
        return [self.labels[int(i)] for i in logits.argmax(-1)]
