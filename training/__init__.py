"""SegDrop training: recipes that make the models the nodes use.

* ``python -m segdrop.training scratch --config training/configs/default_model.toml`` trains the default toy-world
  text-to-image model from scratch (``train_scratch.py``); ``accelerate launch -m segdrop.training scratch ...``
  runs the same script on one or many GPUs.
* ``bundle.load_bundle(path)`` loads a model folder written by a recipe, or a diffusers Stable Diffusion 1.x
  folder, as a ``ModelBundle`` (unet, text_encoder, tokenizer, scheduler, codec, image_size, info);
  ``bundle.save_bundle`` writes one atomically.
* ``codec.PixelUnshuffleCodec`` / ``codec.AutoencoderKLCodec``: image <-> latent with one interface.
* ``training.loop``: what every recipe shares: checkpoints (atomic, pruned, broken ones skipped), exact resume,
  the loss log, the recorded process count.
* ``training.sampling.sample(bundle, prompts)``: DDIM text-to-image samples to look at.
* ``python -m segdrop demo --localization`` checks that cross-attention localizes the named objects.

Nothing heavy is imported here; import the submodules.
"""
