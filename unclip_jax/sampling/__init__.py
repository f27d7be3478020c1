"""The one jitted sampling chain of each stage (prior, decoder, upsampler, Karlo's, AR decoding),
classifier-free guidance included: the pipelines, the training previews and the benchmarks all
sample through these."""
