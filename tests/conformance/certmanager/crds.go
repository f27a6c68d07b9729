// Package certmanager pins the cert-manager module whose
// CustomResourceDefinitions the conformance suite installs; nothing here is built.
package certmanager

import _ "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
