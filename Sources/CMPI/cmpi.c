#define _GNU_SOURCE
#include "cmpi.h"

#include <sched.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef void *Handle;

static struct {
    void *library;
    Handle comm_world, op_sum, errors_return;
    Handle types[4];
    int (*init_thread)(int *, char ***, int, int *);
    int (*finalize)(void);
    int (*abort)(Handle, int);
    int (*comm_rank)(Handle, int *);
    int (*comm_size)(Handle, int *);
    int (*comm_set_errhandler)(Handle, Handle);
    int (*barrier)(Handle);
    int (*bcast)(void *, int, Handle, int, Handle);
    int (*allgather)(const void *, int, Handle, void *, int, Handle, Handle);
    int (*allgatherv)(const void *, int, Handle, void *, const int *, const int *, Handle, Handle);
    int (*gatherv)(const void *, int, Handle, void *, const int *, const int *, Handle, int, Handle);
    int (*alltoallv)(const void *, const int *, const int *, Handle, void *, const int *, const int *, Handle, Handle);
    int (*ialltoallv)(const void *, const int *, const int *, Handle, void *, const int *, const int *, Handle,
                      Handle, void **);
    int (*test)(void **, int *, void *);
    int (*wait)(void **, void *);
    double (*wtime)(void);
    int (*error_string)(int, char *, int *);
    int (*get_library_version)(char *, int *);
} mpi;

#define MK_IN_PLACE ((void *)1)
#define MK_MPI_MAX_ERROR_STRING 256
#define MK_MPI_MAX_LIBRARY_VERSION_STRING 256
#define MK_MPI_THREAD_FUNNELED 1

int mk_mpi_load(const char *library, char *error, size_t error_len) {
    if (mpi.library) return 0;
    const char *names[] = {library, "libmpi.so.40", "libmpi.so"};
    void *h = NULL;
    const char *tried = NULL;
    for (int i = library ? 0 : 1; i < 3 && !h; i++) {
        tried = names[i];
        h = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
        if (library) break;
    }
    if (!h) {
        snprintf(error, error_len, "cannot load the MPI library %s (%s); install Open MPI (Debian: openmpi-bin) or set MAMBAKIT_MPI_LIBRARY",
                 tried, dlerror());
        return -1;
    }
#define SYM(field, name)                                                                          \
    do {                                                                                          \
        *(void **)(&mpi.field) = dlsym(h, name);                                                  \
        if (!mpi.field) {                                                                         \
            snprintf(error, error_len, "the MPI library %s has no %s: MambaKit needs Open MPI 3.0 or later", tried, name); \
            dlclose(h);                                                                           \
            memset(&mpi, 0, sizeof mpi);                                                          \
            return -1;                                                                            \
        }                                                                                         \
    } while (0)
    SYM(get_library_version, "MPI_Get_library_version");
    char version[MK_MPI_MAX_LIBRARY_VERSION_STRING + 1] = {0};
    int len = 0;
    mpi.get_library_version(version, &len);
    if (!strstr(version, "Open MPI")) {
        snprintf(error, error_len, "the MPI library %s is not Open MPI (%.80s): MambaKit loads Open MPI's ABI", tried, version);
        dlclose(h);
        memset(&mpi, 0, sizeof mpi);
        return -1;
    }
    SYM(comm_world, "ompi_mpi_comm_world");
    SYM(op_sum, "ompi_mpi_op_sum");
    SYM(errors_return, "ompi_mpi_errors_return");
    SYM(types[MK_MPI_BYTE], "ompi_mpi_byte");
    SYM(types[MK_MPI_FLOAT], "ompi_mpi_float");
    SYM(types[MK_MPI_DOUBLE], "ompi_mpi_double");
    SYM(types[MK_MPI_INT64], "ompi_mpi_int64_t");
    SYM(init_thread, "MPI_Init_thread");
    SYM(finalize, "MPI_Finalize");
    SYM(abort, "MPI_Abort");
    SYM(comm_rank, "MPI_Comm_rank");
    SYM(comm_size, "MPI_Comm_size");
    SYM(comm_set_errhandler, "MPI_Comm_set_errhandler");
    SYM(barrier, "MPI_Barrier");
    SYM(bcast, "MPI_Bcast");
    SYM(allgather, "MPI_Allgather");
    SYM(allgatherv, "MPI_Allgatherv");
    SYM(gatherv, "MPI_Gatherv");
    SYM(alltoallv, "MPI_Alltoallv");
    SYM(ialltoallv, "MPI_Ialltoallv");
    SYM(test, "MPI_Test");
    SYM(wait, "MPI_Wait");
    SYM(wtime, "MPI_Wtime");
    SYM(error_string, "MPI_Error_string");
#undef SYM
    mpi.library = h;
    return 0;
}

static Handle type(int t) { return (t >= 0 && t < 4) ? mpi.types[t] : NULL; }

int mk_mpi_init(int *rank, int *size) {
    if (!mpi.library) return -1;
    int provided = 0;
    int rc = mpi.init_thread(NULL, NULL, MK_MPI_THREAD_FUNNELED, &provided);
    if (rc) return rc;
    rc = mpi.comm_set_errhandler(mpi.comm_world, mpi.errors_return);
    if (rc) return rc;
    rc = mpi.comm_rank(mpi.comm_world, rank);
    if (rc) return rc;
    return mpi.comm_size(mpi.comm_world, size);
}

int mk_mpi_finalize(void) { return mpi.library ? mpi.finalize() : -1; }
int mk_mpi_abort(int code) { return mpi.library ? mpi.abort(mpi.comm_world, code) : -1; }
int mk_mpi_barrier(void) { return mpi.library ? mpi.barrier(mpi.comm_world) : -1; }

int mk_mpi_bcast(void *buffer, int count, int t, int root) {
    return mpi.library ? mpi.bcast(buffer, count, type(t), root, mpi.comm_world) : -1;
}

int mk_mpi_allgather(const void *send, int count, void *recv, int t) {
    return mpi.library ? mpi.allgather(send, count, type(t), recv, count, type(t), mpi.comm_world) : -1;
}

int mk_mpi_allgatherv_inplace(void *buffer, const int *counts, const int *displs, int t) {
    return mpi.library ? mpi.allgatherv(MK_IN_PLACE, 0, type(t), buffer, counts, displs, type(t), mpi.comm_world) : -1;
}

int mk_mpi_gatherv(const void *send, int count, void *recv, const int *counts, const int *displs, int t, int root) {
    return mpi.library ? mpi.gatherv(send, count, type(t), recv, counts, displs, type(t), root, mpi.comm_world) : -1;
}

int mk_mpi_alltoallv(const void *send, const int *send_counts, const int *send_displs, void *recv,
                     const int *recv_counts, const int *recv_displs, int t) {
    if (!mpi.library) return -1;
    return mpi.alltoallv(send, send_counts, send_displs, type(t), recv, recv_counts, recv_displs, type(t), mpi.comm_world);
}

int mk_mpi_ialltoallv(const void *send, const int *send_counts, const int *send_displs, void *recv,
                      const int *recv_counts, const int *recv_displs, int t, void **request) {
    if (!mpi.library) return -1;
    return mpi.ialltoallv(send, send_counts, send_displs, type(t), recv, recv_counts, recv_displs, type(t),
                          mpi.comm_world, request);
}

int mk_mpi_test(void **request, int *done) { return mpi.library ? mpi.test(request, done, NULL) : -1; }
int mk_mpi_wait(void **request) { return mpi.library ? mpi.wait(request, NULL) : -1; }
double mk_mpi_wtime(void) { return mpi.library ? mpi.wtime() : 0; }

void mk_mpi_error_string(int code, char *buffer, size_t len) {
    if (!mpi.library || len == 0) {
        if (len) snprintf(buffer, len, "MPI error %d", code);
        return;
    }
    char text[MK_MPI_MAX_ERROR_STRING + 1] = {0};
    int n = 0;
    if (mpi.error_string(code, text, &n) != 0) snprintf(text, sizeof text, "MPI error %d", code);
    snprintf(buffer, len, "%s", text);
}

void mk_mpi_library_version(char *buffer, size_t len) {
    if (len == 0) return;
    buffer[0] = 0;
    if (!mpi.library) return;
    char text[MK_MPI_MAX_LIBRARY_VERSION_STRING + 1] = {0};
    int n = 0;
    mpi.get_library_version(text, &n);
    snprintf(buffer, len, "%s", text);
}

int mk_cpu_affinity_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}
