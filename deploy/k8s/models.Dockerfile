# The model store as an image: the init container of deploy/k8s/base/deployment.yaml copies /models/*.mar into
# the pod's store, and TorchServe loads every one of them (the first version of a model is its default). A
# version is a tag: build, push, `kustomize edit set image textclf-models=REGISTRY/textclf-models:TAG`, apply,
# and the Deployment rolls pod by pod. The build context is a folder holding exactly the archives to serve:
#   mkdir -p /tmp/serve && cp model-archive/store/classifier-1.1.mar /tmp/serve/
#   docker build -f deploy/k8s/models.Dockerfile -t REGISTRY/textclf-models:1.1 /tmp/serve
# busybox: the init container needs `sh` and `cp`, nothing else.
FROM busybox:1.36
COPY *.mar /models/
# Readable by the init container's uid 1000; nothing here runs as root.
RUN chmod 0444 /models/*.mar
USER 1000:1000
