"""The department side: read an extract, encode it under the linkage secret, talk to the
linkage unit. Never imports ``linkage_unit``."""
