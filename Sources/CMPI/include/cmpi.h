// MambaKit's door to MPI, loaded at run time.
//
// The ordinary `mambakit` binary must start where no MPI is installed, so nothing here links against libmpi:
// `mk_mpi_load` opens Open MPI's library with dlopen (RTLD_GLOBAL: its components are plugins that resolve
// libmpi's symbols) and looks up the few functions and handles MambaKit uses. Handles are Open MPI's: the
// communicator, datatypes and operations are addresses of library globals (`ompi_mpi_comm_world`, ...),
// MPI_Request is a pointer, MPI_IN_PLACE is (void *)1 and MPI_STATUS_IGNORE is NULL — Open MPI's ABI
// (libmpi.so.40, Open MPI 3.0 to 5.x). `mk_mpi_load` refuses any other library.
//
// Every function returns MPI's error code (0 = MPI_SUCCESS) or, before loading, -1.
#ifndef MAMBAKIT_CMPI_H
#define MAMBAKIT_CMPI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Element types of the collectives.
enum {
    MK_MPI_BYTE = 0,
    MK_MPI_FLOAT = 1,
    MK_MPI_DOUBLE = 2,
    MK_MPI_INT64 = 3,
};

/// Opens `library` (NULL: "libmpi.so.40", then "libmpi.so") and resolves what MambaKit calls. Returns 0, or
/// -1 with a message in `error`.
int mk_mpi_load(const char *library, char *error, size_t error_len);

/// MPI_Init_thread (funnelled: only the main thread calls MPI), errors returned rather than fatal, and the
/// rank and size of MPI_COMM_WORLD.
int mk_mpi_init(int *rank, int *size);
int mk_mpi_finalize(void);
int mk_mpi_abort(int code);
int mk_mpi_barrier(void);
int mk_mpi_bcast(void *buffer, int count, int type, int root);
/// Each rank's `count` elements, concatenated in rank order into `recv` (size · count elements).
int mk_mpi_allgather(const void *send, int count, void *recv, int type);
/// In place: rank r's part is `counts[r]` elements at `displs[r]` of `buffer`.
int mk_mpi_allgatherv_inplace(void *buffer, const int *counts, const int *displs, int type);
int mk_mpi_gatherv(const void *send, int count, void *recv, const int *counts, const int *displs, int type,
                   int root);
int mk_mpi_alltoallv(const void *send, const int *send_counts, const int *send_displs, void *recv,
                     const int *recv_counts, const int *recv_displs, int type);
/// Non-blocking alltoallv; `request` receives the handle for mk_mpi_test / mk_mpi_wait.
int mk_mpi_ialltoallv(const void *send, const int *send_counts, const int *send_displs, void *recv,
                      const int *recv_counts, const int *recv_displs, int type, void **request);
int mk_mpi_test(void **request, int *done);
int mk_mpi_wait(void **request);
double mk_mpi_wtime(void);
/// MPI's text for an error code, and the library's version string.
void mk_mpi_error_string(int code, char *buffer, size_t len);
void mk_mpi_library_version(char *buffer, size_t len);

/// The CPUs this process may run on (sched_getaffinity, which mpirun's binding sets), or -1: the default thread
/// count of a rank.
int mk_cpu_affinity_count(void);

#ifdef __cplusplus
}
#endif

#endif
