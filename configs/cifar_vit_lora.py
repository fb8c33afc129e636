"""ViT-B/16 with LoRA on CIFAR-10, federated asynchronously (for GPU users).

Needs a HuggingFace ViT checkpoint (config.json + model.safetensors), e.g.
google/vit-base-patch16-224 in the HF cache or a local folder:
  --config.model.checkpoint=/path/to/vit-base-patch16-224
and CIFAR-10 (data.dir with cifar-10-batches-py, or `datasets` online).
Images are resized inside the jitted model to the checkpoint's image_size
(bilinear; grayscale is repeated to its channel count). Without the
checkpoint the run stops at once with a one-line error saying where to put
it.
"""
from afl import config as afl_config


def get_config(arg=None):
  del arg
  c = afl_config.base_config()
  c.seed = 0
  c.num_clients = 200
  c.concurrency = 32
  c.data.update(name="cifar10", dir="", partition="dirichlet",
                dirichlet_alpha=0.5, min_shard_size=20)
  c.model.update(name="vit", checkpoint="google/vit-base-patch16-224",
                 lora_rank=8, lora_alpha=16.0,
                 lora_targets=("query", "value"), pooling="cls")
  c.client.update(local_steps=5, batch_size=32, lr=1e-3, optimizer="adam",
                  backend="auto")
  c.server.update(mode="fedbuff", buffer_size=16, optimizer="sgd", lr=1.0)
  c.aggregator.update(name="hybrid")
  c.trust.update(enabled=True)
  c.stop.update(max_versions=300)
  c.eval.update(every_versions=25, batch_size=500)
  return c
