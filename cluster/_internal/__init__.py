"""Internal parts of :mod:`cluster.manifests`: kustomize fallback, validation, policy, autoscaling.

Nothing here is a public API; import from :mod:`cluster.manifests` instead.
"""
