"""The embedder service: text embeddings, financial sentiment and time-series embeddings."""
