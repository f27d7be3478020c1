"""Weight import from Hugging Face CLIP and diffusers unCLIP."""
