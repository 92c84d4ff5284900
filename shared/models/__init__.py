"""Models as trainer, serving and the CLI share them: the signed registry and its cards
(`registry`), the feature transform (`features`), network architectures (`nets`),
attributions (`attribution`) and the prediction wire types (`predictions`)."""
