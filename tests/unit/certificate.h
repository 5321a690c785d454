/* A throwaway self-signed certificate for unit tests that run TLS (client_tls_cert_file and
 * client_tls_key_file). */
#ifndef SLUICE_TEST_CERTIFICATE_H
#define SLUICE_TEST_CERTIFICATE_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stdio.h>

/* A self-signed certificate and its key, for client_tls_cert_file/key_file. */
static bool make_certificate(const char *cert_path, const char *key_path)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    bool ok = false;
    if (key && x) {
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), 0);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, key);
        X509_NAME *name = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"sluice", -1,
                                   -1, 0);
        X509_set_issuer_name(x, name);
        FILE *c = fopen(cert_path, "w"), *k = fopen(key_path, "w");
        ok = X509_sign(x, key, EVP_sha256()) > 0 && c && k && PEM_write_X509(c, x) == 1 &&
             PEM_write_PrivateKey(k, key, NULL, NULL, 0, NULL, NULL) == 1;
        if (c)
            fclose(c);
        if (k)
            fclose(k);
    }
    X509_free(x);
    EVP_PKEY_free(key);
    return ok;
}

#endif
