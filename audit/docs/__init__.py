"""The EU documents a provider of a general-purpose AI model keeps and publishes, written from
signed evidence (``flopgate docs eu``): the Model Documentation Form of the GPAI Code of Practice
(``model_documentation``) and the public summary of training content (``training_content``).

``evidence`` reads and verifies the inputs (the audit, run and generation records, the ledger);
``write`` renders both documents, signs a statement over the files and writes them. Every entry
says where its value came from (the signed file and its sha256), or which plan field would give
it, or why it does not apply. See ``docs/eu-documents.md``.
"""
