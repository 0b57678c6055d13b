"""imgmirror: mirror container images into an OCI image-layout bundle, digest for digest."""

__version__ = "0.1.0"
