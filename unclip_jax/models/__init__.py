"""Model families: CLIP, the priors, the U-Nets (decoder and upsamplers)."""
