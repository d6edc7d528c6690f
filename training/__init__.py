"""Training-side code of the SViTT port: data readers, the synthetic dataset, entry points and recipes."""

from svitt_tools.checkpoint_names import install_checkpoint_name_hint

# The scripts here load checkpoints by the names users type (recipes, --model, pushes): a mistyped SViTT name fails at
# once with how to get a checkpoint, instead of after huggingface_hub's retries. Opted into here, never by the model.
install_checkpoint_name_hint()
