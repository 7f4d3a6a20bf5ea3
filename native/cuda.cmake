# CUDA backend: included by native/CMakeLists.txt when present.
#
# With SPX_CUDA on and nvcc found, native/src/**.cu build into spx_cuda
# (sm_90a machine code plus compute_90 PTX, so a newer GPU can still JIT it;
# sm_90a is sm_90 plus the Hopper-only instructions - wgmma - that
# prefill_attention_v3.cuh uses; SPX_CUDA_SM90A tells the launcher and the
# tests that the build has them),
# linked into spx_core with SPX_HAVE_CUDA defined. Without nvcc the CPU
# backend builds alone and the CUDA tests skip themselves.
if(NOT SPX_CUDA)
  return()
endif()
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "spx: nvcc not found, building the CPU backend only")
  return()
endif()

enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

file(GLOB_RECURSE SPX_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cu)
add_library(spx_cuda STATIC ${SPX_CUDA_SOURCES})
set_target_properties(spx_cuda PROPERTIES CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON)
target_compile_options(spx_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90 -lineinfo --expt-relaxed-constexpr -Xcompiler=-Wall>)
target_include_directories(spx_cuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_compile_definitions(spx_cuda PUBLIC SPX_HAVE_CUDA=1 SPX_CUDA_SM90A=1)
target_link_libraries(spx_cuda PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt)
target_link_libraries(spx_core PUBLIC spx_cuda)

# Benchmarks (bench/cuda/*.cu), built with the backend but never by CI tests.
file(GLOB SPX_CUDA_BENCH_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/../bench/cuda/*.cu)
foreach(bench_src ${SPX_CUDA_BENCH_SOURCES})
  get_filename_component(bench_name ${bench_src} NAME_WE)
  add_executable(${bench_name} ${bench_src})
  set_target_properties(${bench_name} PROPERTIES CUDA_ARCHITECTURES OFF)
  target_compile_options(${bench_name} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a -lineinfo>)
  target_link_libraries(${bench_name} PRIVATE spx_core)
endforeach()
