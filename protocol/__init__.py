"""What every side of bloomlink agrees on: schema, normalisation, tokens, encoding, keys,
fingerprints, the encoded-file format, wire conversion and the audit record format."""
