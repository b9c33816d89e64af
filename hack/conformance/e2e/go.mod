// A module of its own so that `go test ./...` of nftpolicy never compiles the
// upstream e2e suite; hack/conformance/build.sh copies this directory into a
// throwaway module that requires k8s.io/kubernetes and builds it there.
module nftpolicy.local/hack/conformance/e2e

go 1.26
