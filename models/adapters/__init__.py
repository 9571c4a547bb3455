"""LoRA adapters as zoo checkpoints and as generated samples (PEFT's folder format).

- ``spec``: the plain-LoRA subset of PEFT's ``adapter_config.json`` that we read and write
  (``LoraSpec``), and which tensors it implies for a base network (``adapter_layout``);
- ``canonical``: one representative per adapter (LoRA is only defined up to an r x r matrix);
- ``merge``: base + adapter as a full state dict, and a module that scores adapters;
- ``folder``: reading PEFT folders defensively and writing them atomically;
- ``base``: the base network's weights, checked against their recorded sha256;
- ``zoo_import``: ``rpg zoo import`` of a folder of PEFT adapter folders.

None of this imports ``peft``: reading, writing and merging adapters is plain safetensors and
JSON. Only the tests that load our folders with ``PeftModel.from_pretrained`` need it.
"""
