"""The cache of entries on a store: manifests, blobs in and out, single flight, audit and maintenance."""
