"""The bundle: an OCI image layout in a tar (or a directory), written (writer, volumes), read in
place (reader), checked (verify), cut down to one image (extract), taken as a base (base)."""
