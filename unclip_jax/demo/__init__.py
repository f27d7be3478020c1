"""The demo: the whole chain trained and evaluated on the captioned shapes (`make demo`)."""
