"""Lepton Stream common library: config, events, topics, kafka, tracing, crypto, datasets."""
