"""Signatures and the trust policy: which images must be signed, by whom, checked outside (sync)
and inside, offline, from the bundle alone (verify, push, serve --policy).

    types.py     Candidate (one signature found), Verdict (the policy's answer for one image)
    cosign.py    signatures as cosign writes them (the .sig tag's simple-signing layers, Sigstore
                 bundle v0.3 referrers) and their check against public keys
    keyless.py   Sigstore keyless: certificate chain, identity, issuer and transparency-log proof
                 against a trusted root, offline
    policy.py    the policy of mirror.yaml applied to an image: find, check, report
"""
